"""Malformed calls: hypothesis-generated messages (and raw bytes) to every Admin, Fisher and Record
method of a real server on loopback. Each answers OK or a client-error status with a message, never
INTERNAL/UNKNOWN; oversize messages are refused; the server keeps serving throughout.
With ``FIUN_FUZZ_REPORT=DIR/NAME.json`` the tallies (calls per method and status) go to
DIR/NAME-services.json."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_support import AgentHost

from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.models import build_model
from fiun_peer.records import LINEAGE_V1
from fiun_peer.rpc.channel import open_channel
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2, fisher_pb2, records_pb2
from fiun_peer.tensors import to_bytes

TOKEN = "fuzz-token"
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
TALLY: Counter = Counter()

# (service, method, request class, response streams?) of every method in the wire contract
METHODS = [
    (service.full_name, m.name, getattr(module, m.input_type.name), m.server_streaming)
    for module, name in ((admin_pb2, "AdminService"), (fisher_pb2, "FisherService"), (records_pb2, "RecordService"))
    for service in [module.DESCRIPTOR.services_by_name[name]] for m in service.methods
]

_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.text(max_size=200),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=2000),
    FieldDescriptor.TYPE_INT32: st.integers(-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
}


def message_fields(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[dict]:
    """Random values for every field of a message (nested messages to depth 2)."""
    fields = {}
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or f.message_type.GetOptions().map_entry:
                continue
            value = message_fields(f.message_type, depth + 1)
        else:
            value = _SCALARS[f.type]
        is_repeated = getattr(f, "is_repeated", None)
        repeated = is_repeated if is_repeated is not None else f.label == FieldDescriptor.LABEL_REPEATED
        fields[f.name] = st.lists(value, max_size=8) if repeated else value
    return st.fixed_dictionaries({}, optional=fields)


def build(cls, values: dict):
    msg = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type._concrete_class
            if isinstance(value, list):
                getattr(msg, name).extend(build(sub, v) for v in value)
            else:
                getattr(msg, name).CopyFrom(build(sub, value))
        elif isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


def tiny_model() -> tuple[bytes, bytes, str]:
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    x = torch.rand(20, 1, 8, 8)
    y = torch.arange(20) % 10
    arch = json.dumps({"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10})
    return to_bytes(model.state_dict()), to_bytes({"x": x, "y": y}), arch


WEIGHTS, DATA, ARCH = tiny_model()
SETTING_KEYS = sorted(FIUnSettings().to_dict())
json_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False),
                        st.text(max_size=20))


def _weights_with(value: float) -> bytes:
    state = build_model("mlp", (1, 8, 8), 10, seed=0).state_dict()
    state["head.weight"][0, 0] = value
    return to_bytes(state)


def _pickled() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def _zip(payload: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/models/model.json", payload)
        z.writestr("archive/data.pkl", payload)
    return buf.getvalue()


HOSTILE_WEIGHTS = [_weights_with(float("nan")), _weights_with(float("inf")), _weights_with(-float("inf")),
                   to_bytes({"head.weight": torch.zeros(10, 128)}), b"\x00" * 16]


@st.composite
def hostile_publish(draw) -> dict:
    """PublishModel fields that must be refused: non-finite weights, labels outside the head, an
    architecture that is unknown, malformed or over the size bounds, data that does not fit it."""
    what = draw(st.sampled_from(["weights", "labels", "arch", "data", "format"]))
    if what == "format":  # models in their own formats: code to run, a foreign zip, names that do not exist
        fmt = draw(st.sampled_from(["torch-export", "torchvision", "hf"]))
        if fmt == "torch-export":
            artifact = draw(st.sampled_from([_pickled(), _zip(draw(st.binary(max_size=64))), WEIGHTS]))
            return {"format": fmt, "weights": artifact, "architecture_json": draw(st.sampled_from(["", ARCH]))}
        if fmt == "torchvision":
            arch = {"name": draw(st.sampled_from(["resnet18", "yolo", "", "../x", "fasterrcnn_resnet50_fpn"])),
                    "num_classes": draw(st.integers(-1, 20))}
            return {"format": fmt, "architecture_json": json.dumps(arch), "weights": draw(st.sampled_from(
                [WEIGHTS, _pickled()]))}
        config = {"model_type": draw(st.sampled_from(["bert", "vit", "gpt2", ""])),
                  "architectures": [draw(st.sampled_from(["BertForSequenceClassification", "GPT2LMHeadModel"]))]}
        if draw(st.booleans()):
            config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
        return {"format": fmt, "architecture_json": json.dumps(config), "head": draw(st.sampled_from(["", "x.y"]))}
    if what == "weights":
        return {"weights": draw(st.sampled_from(HOSTILE_WEIGHTS))}
    if what == "labels":
        n = draw(st.integers(1, 30))
        y = torch.tensor(draw(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n)))
        y[draw(st.integers(0, n - 1))] = draw(st.one_of(st.integers(10, 2**40), st.integers(-2**40, -1)))
        return {"data": to_bytes({"x": torch.rand(n, 1, 8, 8), "y": y}),
                "labels": draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=4))}
    if what == "arch":
        dims = st.one_of(st.integers(-3, 3), st.integers(2**10, 2**40), st.floats(0, 10), st.booleans(), st.text(max_size=3))
        arch = {"model": draw(st.sampled_from(["mlp", "cnn", "resnet", "vit", ""])),
                "in_shape": draw(st.one_of(st.lists(dims, max_size=5), st.sampled_from([[1, 2**20, 2**20],
                                                                                         [3, 4096, 4096]]))),
                "num_classes": draw(st.one_of(st.integers(-2, 2**40), st.none(), st.text(max_size=3)))}
        if draw(st.booleans()):
            arch[draw(st.text(max_size=8))] = draw(json_values)
        return {"architecture_json": json.dumps(arch)}
    shape = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    x = torch.rand(*shape, dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    if draw(st.booleans()) and x.numel():
        x.view(-1)[0] = float("nan")
    return {"data": to_bytes({"x": x, "y": torch.zeros(shape[0], dtype=torch.long)})}


@st.composite
def calls(draw) -> tuple[str, str, object, bool]:
    service, method, cls, streams = draw(st.sampled_from(METHODS))
    values = draw(message_fields(cls.DESCRIPTOR))
    # Plausible-looking variants reach past the first checks into the agent.
    if method == "PublishModel" and draw(st.booleans()):
        values.update(weights=WEIGHTS, data=DATA, architecture_json=draw(st.sampled_from([ARCH, ARCH, "[]", "{"])))
        if draw(st.booleans()):  # a usable id and no parents: only labels/head tensors left to be wrong
            values.update(model_id=draw(st.from_regex(r"[a-z][a-z0-9]{0,12}", fullmatch=True)), parents=[],
                          head_tensors=draw(st.sampled_from([[], ["head.weight", "head.bias"], ["x"]])),
                          format=draw(st.sampled_from(["", "zoo", "zoo", "torch-export", "torchvision", "hf", "onnx"])),
                          head=draw(st.sampled_from(["", "", "head", "features.1", "nope", "head; x"])))
        if draw(st.booleans()):  # hostile content behind a usable id (issue 14): each must be refused
            values.update(model_id=draw(st.from_regex(r"h[a-z0-9]{0,12}", fullmatch=True)), parents=[])
            values.update(draw(hostile_publish()))
    if method == "RequestUnlearning" and draw(st.booleans()):
        values["settings_json"] = json.dumps(draw(st.dictionaries(st.sampled_from(SETTING_KEYS + ["bogus"]),
                                                                  json_values, max_size=3)))
        values["forget_labels"] = draw(st.lists(st.integers(-3, 12), max_size=4))
    if method in ("Fetch", "GetRequest") and draw(st.booleans()):
        key = "digest" if method == "Fetch" else "request_id"
        values[key] = draw(st.sampled_from(["0" * 64, "A" * 64, "../../etc/passwd", "", "r" * 200]))
    return service, method, build(cls, values), streams


def invoke(channel: grpc.Channel, service: str, method: str, request, streams: bool) -> grpc.StatusCode:
    path = f"/{service}/{method}"
    serialize = (lambda b: b) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
    try:
        if streams:
            for _ in channel.unary_stream(path, request_serializer=serialize)(request, timeout=60):
                pass
        else:
            channel.unary_unary(path, request_serializer=serialize)(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (method, exc.code(), exc.details(), request)
        assert exc.details(), (method, exc.code())           # always says why
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    out = os.environ.get("FIUN_FUZZ_REPORT")
    if out and TALLY:
        path = Path(out)
        path.with_name(f"{path.stem}-services{path.suffix}").write_text(
            json.dumps(dict(sorted(TALLY.items())), indent=2) + "\n")


def footprint(host: AgentHost, request) -> tuple:
    """What a PublishModel call could leave behind: the model's first version in the store (its
    state's original weights and data digests, its version-1 lineage records), its weights and data
    blobs, a version-1 lineage record for it handed to gossip. Not the whole store: the agent's own
    work on earlier requests goes on in the background, and applying one to this model id writes a
    new version (state, a version-2 record, receipts) between two reads; that is not the call's."""
    mid = request.model_id
    blobs = [host.call(host.store.has_blob, hashlib.sha256(b).hexdigest()) for b in (request.weights, request.data)]
    lineage = [r.record_id for r in host.call(host.store.records, "lineage")
               if r.predicate["model_id"] == mid and r.predicate["version"] == 1]
    statements = [json.loads(base64.b64decode(json.loads(env)["payload"])) for env in host.published]
    sent = sum(s["predicateType"] == LINEAGE_V1 and s["predicate"].get("model_id") == mid
               and s["predicate"].get("version") == 1 for s in statements)
    state = host.call(host.store.get_state, f"model:{mid}")
    first = None if state is None else (state.get("original"), state.get("data"))
    return first, lineage, blobs, sent


def test_fuzz_every_method_with_generated_messages(tmp_path: Path) -> None:
    with AgentHost(tmp_path / "h", token=TOKEN) as host, open_channel(host.target, token=TOKEN) as channel:

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])
        @given(call=calls())
        def run(call) -> None:
            service, method, request, streams = call
            before = footprint(host, request) if method == "PublishModel" else None
            code = invoke(channel, service, method, request, streams)
            TALLY[f"{method}:{code.name}"] += 1
            if before is not None and code != grpc.StatusCode.OK:  # a refused publication leaves nothing
                changed = footprint(host, request) != before
                TALLY["PublishModel:refused_and_stored_something" if changed else "PublishModel:refused_stored_nothing"] += 1
                assert not changed, request

        run()
        status = open_channel(host.target, token=TOKEN)
        with status:
            stub_status = status.unary_unary("/fiun.v1.AdminService/Status",
                                             request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=admin_pb2.StatusReply.FromString)
            assert stub_status(admin_pb2.StatusRequest(), timeout=10).name == "host"   # still serving
    assert {k.split(":")[0] for k in TALLY} == {m for _, m, _, _ in METHODS}         # every method was hit


def test_fuzz_every_method_with_raw_bytes(tmp_path: Path) -> None:
    with AgentHost(tmp_path / "h", token=TOKEN) as host, open_channel(host.target, token=TOKEN) as channel:
        seen: Counter = Counter()

        @settings(max_examples=200, deadline=None)
        @given(target=st.sampled_from(METHODS), data=st.binary(max_size=512))
        def run(target, data: bytes) -> None:
            service, method, _, streams = target
            code = invoke(channel, service, method, data, streams)
            seen[code] += 1
            TALLY[f"raw:{method}:{code.name}"] += 1

        run()
        # Undecodable bytes are the caller's error, and say which method they were sent to.
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/fiun.v1.AdminService/GetRequest", request_serializer=lambda b: b)(
                b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GetRequest" in info.value.details()
        assert seen[grpc.StatusCode.INVALID_ARGUMENT] > 0


def test_oversize_messages_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    with AgentHost(tmp_path / "h", token=TOKEN, max_message_bytes=1 << 20) as host, \
            open_channel(host.target, token=TOKEN) as channel:
        for service, method, request in (
                ("fiun.v1.RecordService", "Push", records_pb2.Envelope(data=b"x" * (2 << 20))),
                ("fiun.v1.AdminService", "PublishModel",
                 admin_pb2.PublishModelRequest(model_id="big", weights=b"w" * (2 << 20), data=b"d"))):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString())(
                    request, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
        # A record over the 256 KiB record limit but under the message limit: refused and counted.
        reply = channel.unary_unary("/fiun.v1.RecordService/Push", request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=records_pb2.PushReply.FromString)(
            records_pb2.Envelope(data=b"{" * (300 << 10)), timeout=30)
        assert not reply.accepted and reply.reason == "too_large"
        assert host.call(host.store.counters)["rejected_too_large"] == 1
        assert host.call(host.store.record_count) == 0
