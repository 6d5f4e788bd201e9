"""Issue 14's acceptance, on two real peer processes: private data and weights never leave their
owner's peer.

alice (open, the default) owns g; bob owns a, a child of g, and runs a closed network
(``--allow-peers``: alice's peer id and a member key). One request to forget label 3: g is its
discovery model (alice announces g's Fisher), a inherits it (bob pulls that Fisher). Then clients
that know every digest in every record, and the digests of the owners' data and weights, ask the
blob service for all of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fiun_peer.gossip import GossipError, GossipNode
from fiun_peer.identity import Identity
from fiun_peer.models import build_model
from fiun_peer.records import parse_record
from fiun_peer.rpc.channel import open_channel
from fiun_peer.rpc.generated.fiun.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fisher_pb2,
    fisher_pb2_grpc,
    records_pb2,
)
from fiun_peer.rpc.peer_auth import HEADER, sign_call
from fiun_peer.rpc.record_service import sync_records
from fiun_peer.tensors import to_bytes
from simulations.peers import Peer, PeerCluster

MEMBER = Identity.generate("member")        # on bob's allow list, owns nothing
STRANGER = Identity.generate("stranger")    # signs its calls, but is on no list
ARCH = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}
HEX64 = re.compile(rb"[0-9a-f]{64}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Net:
    alice: Peer
    bob: Peer
    files: dict[str, bytes]          # "g.weights", "g.data", "a.weights", "a.data": what was published
    new_weights: set[str]            # digests of the versions unlearning made
    fishers: set[str]                # digests the announcements name

    @property
    def secrets(self) -> set[str]:
        return {sha(b) for b in self.files.values()} | self.new_weights


def _own(seed: int, labels: list[int]) -> tuple[bytes, bytes]:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels).repeat(6)
    return (to_bytes(build_model("mlp", (1, 8, 8), 10, seed=seed).state_dict()),
            to_bytes({"x": torch.rand(len(y), 1, 8, 8, generator=g), "y": y}))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    cluster = PeerCluster(root, ["alice", "bob"], sync_interval=1.0)
    alice, bob = cluster.peers
    cluster.init_all(cluster.peers)
    allow = root / "bob-allows.txt"
    allow.write_text(f"# bob's network\n{Identity.load(alice.home).peer_id}   # alice\n{MEMBER.public_key_hex}\n")
    bob.env = {"FIUN_ALLOW_PEERS": str(allow)}
    files = {}
    with cluster:
        files["g.weights"], files["g.data"] = _own(0, [0, 1, 2, 3, 4, 5])
        files["a.weights"], files["a.data"] = _own(1, [5, 6, 7, 8, 9])
        alice.admin.PublishModel(admin_pb2.PublishModelRequest(
            model_id="g", weights=files["g.weights"], data=files["g.data"], architecture_json=json.dumps(ARCH)),
            timeout=60)
        cluster.wait_lineage(bob, 1)                  # alice's signed push got through bob's allow list
        bob.admin.PublishModel(admin_pb2.PublishModelRequest(
            model_id="a", weights=files["a.weights"], data=files["a.data"], architecture_json=json.dumps(ARCH),
            parents=[admin_pb2.Parent(model_id="g", relation="finetune")]), timeout=60)
        cluster.wait_lineage(alice, 2)
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[3], request_id="forget-3"),
                                      timeout=30)
        done = cluster.wait_request(alice, "forget-3", timeout=120)
        assert {m.model_id: m.state for m in done.models} == {"g": "applied", "a": "applied"}
        cluster.wait_request(bob, "forget-3", timeout=60)
        for peer in (alice, bob):  # later versions travel by anti-entropy: wait until both hold all 8
            deadline = time.monotonic() + 60
            while peer.admin.Status(admin_pb2.StatusRequest(), timeout=10).records < 8:
                assert time.monotonic() < deadline, f"{peer.name} does not hold all 8 records"
                time.sleep(0.2)
        records = [parse_record(e) for e in sync_records(alice.grpc, [])]
        yield Net(alice, bob, files, {m.new_digest for m in done.models},
                  {r.predicate["fisher_digest"] for r in records if r.kind == "announcement"})


def named_digests(envelopes: list[bytes]) -> set[str]:
    """Every 64-hex string anywhere in the records: envelope and signed statement alike."""
    out = set()
    for env in envelopes:
        statement = base64.b64decode(json.loads(env)["payload"])
        out |= {m.decode() for m in HEX64.findall(env) + HEX64.findall(statement)}
        out.add(sha(env))                                   # the record ids, too
    return out


def fetch_all(target: str, digests: set[str], identity: Identity | None = None) -> dict[str, grpc.StatusCode]:
    """Ask the blob service for each digest; the status of each answer (OK only with the right bytes)."""
    out = {}
    with open_channel(target, identity=identity) as channel:
        stub = fisher_pb2_grpc.FisherServiceStub(channel)
        for d in sorted(digests):
            try:
                data = b"".join(c.data for c in stub.Fetch(fisher_pb2.FetchRequest(digest=d), timeout=30))
                assert sha(data) == d
                out[d] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                out[d] = exc.code()
    return out


def test_an_outsider_reads_every_record_and_gets_no_data_and_no_weights(net: Net) -> None:
    envelopes = sync_records(net.alice.grpc, [])                       # no credential at all
    kinds = sorted(parse_record(e).kind for e in envelopes)
    assert kinds == ["announcement", "lineage", "lineage", "lineage", "lineage", "receipt", "receipt", "request"]
    asked = named_digests(envelopes) | net.secrets
    assert net.secrets - named_digests(envelopes) == {sha(net.files["g.data"]), sha(net.files["a.data"])}
    answers = fetch_all(net.alice.grpc, asked)
    served = {d for d, c in answers.items() if c == grpc.StatusCode.OK}
    assert served == net.fishers and len(served) == 1                  # g's announced Fisher, nothing else
    assert not served & net.secrets
    assert set(answers.values()) == {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}


def test_a_refused_blob_looks_like_an_absent_one(net: Net) -> None:
    """The answer for alice's own data is the answer for a digest nobody has: it confirms nothing."""
    def details(d: str) -> str:
        with open_channel(net.alice.grpc) as channel, pytest.raises(grpc.RpcError) as info:
            list(fisher_pb2_grpc.FisherServiceStub(channel).Fetch(fisher_pb2.FetchRequest(digest=d), timeout=30))
        return info.value.details().replace(d, "D")
    assert details(sha(net.files["g.data"])) == details(sha(b"nobody holds this"))
    counters = net.alice.admin.Status(admin_pb2.StatusRequest(), timeout=10).counters
    assert counters["fetch_refused"] >= 3                               # counted for the owner, though


def test_no_record_names_the_training_data(net: Net) -> None:
    data_digests = {sha(net.files["g.data"]), sha(net.files["a.data"])}
    for peer, who in ((net.alice, None), (net.bob, MEMBER)):
        with open_channel(peer.grpc, identity=who) as channel:
            envelopes = sync_records(channel, [])
        assert len(envelopes) == 8
        assert not named_digests(envelopes) & data_digests
        for env in envelopes:
            assert "data_digest" not in parse_record(env).predicate


def test_a_member_of_a_closed_network_gets_only_fishers(net: Net) -> None:
    with open_channel(net.bob.grpc, identity=MEMBER) as channel:
        envelopes = sync_records(channel, [])
    answers = fetch_all(net.bob.grpc, named_digests(envelopes) | net.secrets, identity=MEMBER)
    assert {d for d, c in answers.items() if c == grpc.StatusCode.OK} == net.fishers   # bob pulled g's Fisher
    # alice's own key is on bob's list too: the same, and no more
    alice_key = Identity.load(net.alice.home)
    answers = fetch_all(net.bob.grpc, net.secrets | net.fishers, identity=alice_key)
    assert {d for d, c in answers.items() if c == grpc.StatusCode.OK} == net.fishers


def test_an_outsider_is_refused_by_a_closed_peer(net: Net) -> None:
    before = dict(net.bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).counters)
    fisher = next(iter(net.fishers))
    calls = [("/fiun.v1.RecordService/Sync", records_pb2.SyncRequest(), True),
             ("/fiun.v1.RecordService/Push", records_pb2.Envelope(data=b"{}"), False),
             ("/fiun.v1.RecordService/Peers", records_pb2.PeersRequest(), False),
             ("/fiun.v1.RecordService/Identify", records_pb2.IdentifyRequest(), False),
             ("/fiun.v1.FisherService/Fetch", fisher_pb2.FetchRequest(digest=fisher), True)]

    def call(method: str, request, streams: bool, metadata=None) -> tuple[grpc.StatusCode, str]:
        with open_channel(net.bob.grpc) as channel:
            rpc = (channel.unary_stream if streams else channel.unary_unary)(
                method, request_serializer=lambda m: m.SerializeToString())
            try:
                result = rpc(request, timeout=30, metadata=metadata)
                if streams:
                    list(result)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""

    for method, request, streams in calls:
        assert call(method, request, streams)[0] == grpc.StatusCode.UNAUTHENTICATED, method         # no key
        signed = [(HEADER, sign_call(STRANGER, method, request.SerializeToString()))]
        assert call(method, request, streams, signed)[0] == grpc.StatusCode.PERMISSION_DENIED, method
    # A member's signature covers one request to one method, once.
    method, request, _ = calls[-1]
    header = [(HEADER, sign_call(MEMBER, method, request.SerializeToString()))]
    assert call(method, request, True, header)[0] == grpc.StatusCode.OK
    code, details = call(method, request, True, header)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "already used" in details                   # replayed
    other = fisher_pb2.FetchRequest(digest=sha(net.files["a.weights"]))
    fresh = [(HEADER, sign_call(MEMBER, method, request.SerializeToString()))]
    assert call(method, other, True, fresh)[0] == grpc.StatusCode.UNAUTHENTICATED                  # other request
    after = net.bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).counters
    assert after["peer_unauthenticated"] - before.get("peer_unauthenticated", 0) == len(calls) + 2
    assert after["peer_permission_denied"] - before.get("peer_permission_denied", 0) == len(calls)
    with open_channel(net.bob.grpc) as channel:                     # health stays open for probes
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_weights_go_only_to_the_owners_credential(net: Net, tmp_path: Path) -> None:
    def export(peer: Peer, token: str | None, **fields) -> admin_pb2.ExportModelReply:
        with open_channel(peer.admin_address, token=token) as channel:
            return admin_pb2_grpc.AdminServiceStub(channel).ExportModel(
                admin_pb2.ExportModelRequest(**fields), timeout=30)

    def refused(peer: Peer, token: str | None, **fields) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            export(peer, token, **fields)
        assert info.value.details()
        return info.value.code()

    alice_token = (net.alice.home / "admin.token").read_text().strip()
    bob_token = (net.bob.home / "admin.token").read_text().strip()
    assert refused(net.alice, None, model_id="g") == grpc.StatusCode.UNAUTHENTICATED
    assert refused(net.alice, bob_token, model_id="g") == grpc.StatusCode.PERMISSION_DENIED   # another owner
    current = export(net.alice, alice_token, model_id="g")
    assert current.version == 2 and current.model_digest in net.new_weights and sha(current.weights) == current.model_digest
    first = export(net.alice, alice_token, model_id="g", version=1)
    assert first.weights == net.files["g.weights"]
    assert export(net.alice, alice_token, model_id="g", model_digest=sha(net.files["g.weights"])).version == 1
    assert refused(net.alice, alice_token, model_id="a") == grpc.StatusCode.NOT_FOUND         # bob's model
    assert refused(net.alice, alice_token, model_id="g", version=7) == grpc.StatusCode.NOT_FOUND
    assert refused(net.alice, alice_token, model_id="g", model_digest=sha(net.files["g.data"])) == \
        grpc.StatusCode.NOT_FOUND                                                            # not a version
    assert refused(net.alice, alice_token, model_id="g", model_digest="xyz") == grpc.StatusCode.INVALID_ARGUMENT
    # The CLI: fiun-peer admin --home alice export
    out = tmp_path / "g.safetensors"
    cli = subprocess.run([sys.executable, "-m", "fiun_peer.cli", "admin", "--home", str(net.alice.home), "export",
                          "--model-id", "g", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"exported g v2 {current.model_digest}" in cli.stdout
    assert out.read_bytes() == current.weights and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_the_three_bad_publications_are_refused_by_a_real_peer(net: Net) -> None:
    weights = build_model("mlp", (1, 8, 8), 10, seed=3).state_dict()
    weights["head.weight"][0, 0] = float("nan")
    good_w, good_d = _own(3, [1, 2])
    cases = {
        "non-finite weights": dict(weights=to_bytes(weights), data=good_d),
        "label beyond the head": dict(weights=good_w, data=to_bytes({"x": torch.rand(2, 1, 8, 8),
                                                                    "y": torch.tensor([1, 50])})),
        "absurd in_shape": dict(weights=good_w, data=good_d,
                                architecture_json=json.dumps({**ARCH, "in_shape": [1, 2**20, 2**20]})),
    }
    before = net.alice.admin.Status(admin_pb2.StatusRequest(), timeout=10)
    for case, fields in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            net.alice.admin.PublishModel(admin_pb2.PublishModelRequest(
                model_id="bad", **{"architecture_json": json.dumps(ARCH), **fields}), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, info.value.details())
    after = net.alice.admin.Status(admin_pb2.StatusRequest(), timeout=10)
    assert after.records == before.records and "bad" not in after.models
    assert after.counters["admin_invalid_argument"] == before.counters.get("admin_invalid_argument", 0) + 3


def test_a_closed_peer_closes_libp2p_connections_from_outsiders(net: Net) -> None:
    """The allow list closes the gossip side too: an outsider's libp2p connection (its peer id
    proven by Noise) is closed at once, so it neither hears nor injects gossip there."""
    bob_id = net.bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).peer_id

    async def dial() -> bool:
        node = GossipNode(STRANGER.libp2p_keypair(), "/ip4/127.0.0.1/tcp/0")
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                await node.connect(net.bob.p2p[0])
            except GossipError:
                pass                                    # closed while the dial was still settling
            with trio.move_on_after(30):
                while bob_id in node.connected_peers():
                    await trio.sleep(0.1)
            closed = bob_id not in node.connected_peers()
            nursery.cancel_scope.cancel()
        return closed

    assert trio.run(dial)
    assert net.bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).counters["p2p_refused"] >= 1
    assert net.bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).connected_peers >= 1   # alice still is
