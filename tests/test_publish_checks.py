"""Every bad PublishModel is refused with INVALID_ARGUMENT and the reason, before anything is stored or
signed: non-finite weights, labels outside the head, architectures over the size bounds (checked
before a tensor is allocated) and the other inputs that once ended in an exception. A real Agent
behind a real gRPC server (one for the module); after every refusal the store holds exactly what it
held before, and nothing was handed to gossip."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from security_support import AgentHost

from fiun_peer import validate
from fiun_peer.models import build_model, largest_output
from fiun_peer.rpc.channel import open_channel
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc
from fiun_peer.tensors import to_bytes
from fiun_peer.validate import MAX_ACTIVATION_ELEMENTS, MAX_INPUT_ELEMENTS, MAX_PARAMETERS, check_architecture

TOKEN = "publish-token"
ARCH = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}


def weights(**change: float) -> bytes:
    state = build_model("mlp", (1, 8, 8), 10, seed=0).state_dict()
    for name, value in change.items():
        state[name.replace("__", ".")][0].fill_(value)
    return to_bytes(state)


def data(y: torch.Tensor | None = None, x: torch.Tensor | None = None) -> bytes:
    y = torch.arange(20) % 10 if y is None else y
    x = torch.rand(len(y), 1, 8, 8) if x is None else x
    return to_bytes({"x": x, "y": y})


def request(**fields) -> admin_pb2.PublishModelRequest:
    base = dict(model_id="m", weights=weights(), data=data(), architecture_json=json.dumps(ARCH))
    return admin_pb2.PublishModelRequest(**{**base, **fields})


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with AgentHost(tmp_path_factory.mktemp("publish") / "h", token=TOKEN) as h:
        yield h


@pytest.fixture(scope="module")
def stub(host):
    with open_channel(host.target, token=TOKEN) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


def snapshot(host: AgentHost) -> tuple:
    """What a refused call must leave unchanged: records, state, blobs, and what went to gossip."""
    blobs = sorted(p.name for p in host.store.blob_root.glob("??/*"))
    return (host.call(host.store.record_ids), host.call(host.store.states), blobs, len(host.published))


CASES = {
    # the three cases of issue 14
    "nan weights": (dict(weights=weights(head__weight=float("nan"))), "holds NaN or Inf"),
    "inf weights": (dict(weights=weights(features__1__bias=float("inf"))), "holds NaN or Inf"),
    "label beyond the head": (dict(data=data(y=torch.tensor([0, 1, 50]))), "labels must be in 0..9"),
    "absurd in_shape": (dict(architecture_json=json.dumps({**ARCH, "in_shape": [1, 2**20, 2**20]})),
                        "numbers per sample"),
    # and others that reached an exception before
    "negative label": (dict(data=data(y=torch.tensor([0, -1]))), "labels must be in 0..9"),
    "declared label beyond the head": (dict(labels=[0, 1, 12]), "outside the head"),
    "negative declared label": (dict(labels=[-3]), "outside the head"),
    "x of another shape": (dict(data=data(x=torch.rand(20, 1, 4, 4))), "in_shape is [1, 8, 8]"),
    "x in float64": (dict(data=data(x=torch.rand(20, 1, 8, 8, dtype=torch.float64))), "must be float32"),
    "x with NaN": (dict(data=data(x=torch.full((20, 1, 8, 8), float("nan")))), "'x' holds NaN"),
    "no samples": (dict(data=data(y=torch.zeros(0, dtype=torch.long))), "no samples"),
    "weights in float64": (dict(weights=to_bytes({k: v.double() if v.is_floating_point() else v for k, v in
                                                  build_model("mlp", (1, 8, 8), 10, seed=0).state_dict().items()})),
                           "dtype torch.float64"),
    "weights of another model": (dict(weights=to_bytes(build_model("mlp", (1, 8, 8), 5, seed=0).state_dict())),
                                 "head.bias has shape [5]"),
    "weights missing a tensor": (dict(weights=to_bytes({"head.weight": torch.zeros(10, 128)})), "missing"),
    "weights not safetensors": (dict(weights=b"\x00" * 64), "not a valid safetensors"),
    "cnn on 1x1 images": (dict(architecture_json=json.dumps({"model": "cnn", "in_shape": [1, 1, 1], "num_classes": 10})),
                          "cannot take inputs"),
    "cnn on large images": (dict(architecture_json=json.dumps({"model": "cnn", "in_shape": [3, 128, 128],
                                                                "num_classes": 10})), "layer output"),
    "unknown model": (dict(architecture_json=json.dumps({**ARCH, "model": "transformer"})), "not one of"),
    "in_shape of floats": (dict(architecture_json=json.dumps({**ARCH, "in_shape": [1.0, 8, 8]})), "positive integers"),
    "in_shape with zero": (dict(architecture_json=json.dumps({**ARCH, "in_shape": [1, 0, 8]})), "positive integers"),
    "no classes": (dict(architecture_json=json.dumps({**ARCH, "num_classes": 0})), "num_classes"),
    "boolean classes": (dict(architecture_json=json.dumps({**ARCH, "num_classes": True})), "num_classes"),
    "extra architecture key": (dict(architecture_json=json.dumps({**ARCH, "x": "y" * 300_000})), "unexpected ['x']"),
    "architecture not an object": (dict(architecture_json="[1, 2]"), "must be an object"),
    "architecture not JSON": (dict(architecture_json="{"), "not JSON"),
    "parent relation unknown": (dict(parents=[admin_pb2.Parent(model_id="p", relation="")]), "relation"),
    "parent named twice": (dict(parents=[admin_pb2.Parent(model_id="p", relation="finetune")] * 2), "distinct"),
    "own parent": (dict(parents=[admin_pb2.Parent(model_id="m", relation="finetune")]), "distinct"),
    "unknown parent": (dict(parents=[admin_pb2.Parent(model_id="p", relation="finetune")]), "unknown parent"),
    "head tensors wrong": (dict(head_tensors=["features.1.weight"]), "last Linear"),
    "bad id": (dict(model_id="a/b"), "must match"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_publish_is_refused_and_leaves_nothing(host, stub, case: str) -> None:
    fields, reason = CASES[case]
    before = snapshot(host)
    with pytest.raises(grpc.RpcError) as info:
        stub.PublishModel(request(**fields), timeout=60)
    want = grpc.StatusCode.FAILED_PRECONDITION if case == "unknown parent" else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == want, (case, info.value.code(), info.value.details())
    assert reason in info.value.details(), (case, info.value.details())
    assert snapshot(host) == before, case        # nothing stored, nothing signed or sent


def test_a_good_publish_still_works_and_stores_the_data_digest_locally(host, stub) -> None:
    reply = stub.PublishModel(request(model_id="good"), timeout=60)
    state = host.call(host.store.get_state, "model:good")
    assert state["digest"] == reply.model_digest and len(state["data"]) == 64
    assert host.call(host.store.blob_kinds, state["data"]) == {"data"}
    assert host.call(host.store.blob_kinds, reply.model_digest) == {"weights"}
    lineage = [r for r in host.call(host.store.records, "lineage") if r.predicate["model_id"] == "good"]
    assert len(lineage) == 1 and "data_digest" not in lineage[0].predicate
    assert state["data"].encode() not in lineage[0].envelope


def test_bounds_are_what_the_docs_say(monkeypatch) -> None:
    """The documented bounds (AdminService reference, docs/security.md) and the data sets they admit."""
    assert (MAX_INPUT_ELEMENTS, MAX_ACTIVATION_ELEMENTS, MAX_PARAMETERS) == (262_144, 262_144, 67_108_864)
    check_architecture({"model": "cnn", "in_shape": [3, 64, 64], "num_classes": 200})     # TinyImageNet fits
    check_architecture({"model": "resnet", "in_shape": [3, 32, 32], "num_classes": 100})  # CIFAR-100 fits
    # The zoo cannot reach the parameter bound inside the input bound; it is counted all the same.
    monkeypatch.setattr(validate, "MAX_PARAMETERS", 10_000)
    with pytest.raises(validate.PublishError, match="parameters, more than the 10,000"):
        check_architecture(ARCH)


@pytest.mark.parametrize("name,shape,classes", [
    ("mlp", (1, 8, 8), 10), ("mlp", (300,), 7), ("mlp", (2, 3), 500), ("cnn", (1, 2, 2), 10),
    ("cnn", (3, 8, 12), 10), ("cnn", (2, 5, 3), 300), ("resnet", (1, 1, 1), 10), ("resnet", (3, 7, 9), 10)])
def test_largest_output_is_what_a_real_forward_pass_makes(name: str, shape: tuple[int, ...], classes: int) -> None:
    """The bound is computed from the zoo's shapes, not by running the model: check it against a run."""
    model = build_model(name, shape, classes, seed=0).eval()
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel())) for m in model.modules()]
    with torch.no_grad():
        model(torch.rand(1, *shape))
    for h in hooks:
        h.remove()
    assert largest_output(name, shape, classes) == max(sizes)


def test_a_cnn_too_small_for_its_pooling_is_refused_like_torch_would() -> None:
    with pytest.raises(RuntimeError):
        build_model("cnn", (1, 1, 4), 10, seed=0).eval()(torch.rand(1, 1, 1, 4))
    with pytest.raises(ValueError, match="at least 2x2"):
        largest_output("cnn", (1, 1, 4), 10)


def test_an_own_model_from_before_issue_14_still_finds_its_data(tmp_path) -> None:
    """Its version-1 record names the data (accepted, ignored for everyone else) and its local state
    does not: the owner falls back to the record, so old models can still be unlearned."""
    from fiun_peer import records as R
    from fiun_peer.agent import Agent
    from fiun_peer.identity import Identity
    from fiun_peer.store import Store

    me = Identity.generate("me")
    with Store(tmp_path) as store:
        agent = Agent(me, store)
        weights_digest = store.put_blob(weights(), kind="weights")
        data_digest = store.put_blob(data(), kind="data")
        predicate = {"model_id": "old", "version": 1, "parents": [], "relation": "root", "labels": list(range(10)),
                     "head_tensors": ["head.weight", "head.bias"], "architecture": ARCH, "previous_digest": None,
                     "model_fisher_digests": {}, "data_digest": data_digest}
        legacy = R.sign_statement(me, R.LINEAGE_V1, "model:old", weights_digest, predicate)
        assert agent.ingest(legacy.envelope, source="test")[2] == "accepted"
        store.put_state("model:old", {"digest": weights_digest, "version": 1, "original": weights_digest})
        assert agent.models.data_digest("old") == data_digest


def test_a_parent_version_this_peer_does_not_know_is_refused_and_leaves_nothing(host, stub) -> None:
    """Issue 18: a child names the parent version it derived from. One that is not a version of the
    parent this peer knows (a digest nothing made, a version not reached yet) is refused with the
    versions it does know; a digest and a number must agree."""
    parent = stub.PublishModel(request(model_id="pv"), timeout=60).model_digest
    other = "ab" * 32
    known = f"this peer knows v1 {parent[:12]}"
    # A version not known *yet* may arrive (its receipt is on its way): FAILED_PRECONDITION, which
    # --wait-parents retries; a malformed or self-contradicting reference is INVALID_ARGUMENT.
    later, wrong = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (admin_pb2.Parent(model_id="pv", relation="finetune", digest=other), (f"unknown version {other[:12]}", known),
         later),
        (admin_pb2.Parent(model_id="pv", relation="finetune", version=2), ("unknown version 2", known), later),
        (admin_pb2.Parent(model_id="pv", relation="finetune", digest="AB" * 32), ("64 lowercase hex",), wrong),
        (admin_pb2.Parent(model_id="pv", relation="finetune", digest=parent, version=3), ("is version 1, not 3",),
         wrong),
    ]
    for bad, reasons, code in cases:
        before = snapshot(host)
        with pytest.raises(grpc.RpcError) as info:
            stub.PublishModel(request(model_id="pv-child", parents=[bad]), timeout=60)
        assert info.value.code() == code, info.value.details()
        assert all(r in info.value.details() for r in reasons), info.value.details()
        assert snapshot(host) == before
    # Named by number, by digest, or not at all (the current version): each signed with the digest.
    for i, named in enumerate([dict(version=1), dict(digest=parent), {}]):
        reply = stub.PublishModel(request(model_id=f"pv-child-{i}", parents=[
            admin_pb2.Parent(model_id="pv", relation="distill", **named)]), timeout=60)
        assert [(p.model_id, p.relation, p.digest, p.version) for p in reply.parents] == \
            [("pv", "distill", parent, 1)]
        (rec,) = [r for r in host.call(host.store.records, "lineage") if r.record_id == reply.record_id]
        assert rec.predicate["parents"] == [{"model_id": "pv", "digest": parent, "relation": "distill"}]


# -- models in their own formats (fiun_peer.formats) ------------------------------------------------------


def _pickle() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"classifier.weight": torch.zeros(10, 64)}, buf)
    return buf.getvalue()


def _torchvision(name: str) -> bytes:
    from simulations.byom import build

    return to_bytes(build(f"torchvision:{name}", (3, 32, 32), 10, seed=0).state_dict())


def _bert() -> tuple[bytes, dict, torch.Tensor]:
    from simulations.byom import artifact, build
    from simulations.data import TOKEN_VOCAB, load_dataset

    ds = load_dataset("tokens")
    weights, config = artifact("hf-bert-tiny", build("hf-bert-tiny", ds.input_shape, 10, seed=0), ds.x_train[:4])
    assert config["vocab_size"] == TOKEN_VOCAB
    return weights, config, ds.x_train[:20]


def _hf(config_change: dict, shift: int = 0) -> dict:
    """A tiny BERT classifier with its config changed, and text data (token ids shifted by ``shift``)."""
    weights, config, x = _bert()
    data = to_bytes({"input_ids": x[:, 0] + shift, "labels": torch.arange(20) % 10})
    return dict(format="hf", weights=weights, architecture_json=json.dumps({**config, **config_change}), data=data)


def _images() -> bytes:
    return to_bytes({"x": torch.rand(6, 3, 32, 32), "y": torch.arange(6)})


FORMAT_CASES = {
    "unknown format": (lambda: dict(format="onnx"), "unknown model format"),
    "a pickle as a torch.export program": (lambda: dict(format="torch-export", weights=_pickle(), architecture_json=""),
                                           "pickle"),
    "a pickle as torchvision weights": (lambda: dict(format="torchvision", weights=_pickle(), data=_images(),
                                                     architecture_json='{"name": "resnet18", "num_classes": 10}'),
                                        "not a valid safetensors"),
    "torchvision model unknown": (lambda: dict(format="torchvision", data=_images(),
                                               architecture_json='{"name": "yolo", "num_classes": 10}'),
                                  "not a torchvision classification model"),
    "torchvision head not a Linear": (lambda: dict(format="torchvision", weights=_torchvision("mobilenet_v3_small"),
                                                   data=_images(), head="avgpool",
                                                   architecture_json='{"name": "mobilenet_v3_small", "num_classes": 10}'),
                                      "not a Linear layer"),
    "torchvision head not the logits": (lambda: dict(format="torchvision", weights=_torchvision("mobilenet_v3_small"),
                                                     data=_images(), head="classifier.0",
                                                     architecture_json='{"name": "mobilenet_v3_small", '
                                                                       '"num_classes": 10}'),
                                        "does not produce the model's logits"),
    "torchvision without a Linear head": (lambda: dict(format="torchvision", weights=_torchvision("squeezenet1_1"),
                                                       data=_images(),
                                                       architecture_json='{"name": "squeezenet1_1", "num_classes": 10}'),
                                          "no Linear layer"),
    "torchvision images of another size": (lambda: dict(format="torchvision", weights=_torchvision("resnet18"),
                                                        data=to_bytes({"x": torch.rand(4, 1, 32, 32), "y": torch.arange(4)}),
                                                        architecture_json='{"name": "resnet18", "num_classes": 10}'),
                                           "data does not fit the model"),
    "hf remote code": (lambda: _hf({"auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}), "remote code"),
    "hf token ids outside the vocabulary": (lambda: _hf({}, shift=64), "must lie in 0..63"),
}


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_bad_publish_in_another_format_is_refused_and_leaves_nothing(host, stub, case: str) -> None:
    make, reason = FORMAT_CASES[case]
    before = snapshot(host)
    with pytest.raises(grpc.RpcError) as info:
        stub.PublishModel(request(**make()), timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, info.value.code(), info.value.details())
    assert reason in info.value.details(), (case, info.value.details())
    assert snapshot(host) == before, case


def test_a_damaged_version_is_reported_as_data_loss_not_handed_out(host, stub) -> None:
    """ExportModel checks the artifact against its digest: bytes changed on disk (a bad sector, a
    hand edit) come back as DATA_LOSS with the version named, never as weights or as INTERNAL."""
    digest = stub.PublishModel(request(model_id="damaged"), timeout=60).model_digest
    assert stub.ExportModel(admin_pb2.ExportModelRequest(model_id="damaged"), timeout=60).model_digest == digest
    path = host.store.blob_root / digest[:2] / digest
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(grpc.RpcError) as info:
        stub.ExportModel(admin_pb2.ExportModelRequest(model_id="damaged"), timeout=60)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS, info.value.details()
    assert f"version 1 of damaged ({digest[:12]}) is damaged" in info.value.details()
