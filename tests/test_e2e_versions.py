"""Issue 18 on real peers: a lineage edge names the parent *version* the child derived from, and
whether a request concerns the child is decided per version.

Three peers own the il lineage g -> a -> b; `forget-2` is applied everywhere. A late peer (started
after the request) then publishes three children of b:

- d: b's post-unlearning weights (v2), its own data holding label 2: a discovery model, applied with
  its own Fisher only (b v2 passes nothing of label 2 on);
- e: b's original weights (v1), own data without label 2: inherits label 2 through b v1, applied with
  the Fishers of g, a and b (the late joiner catches up on a request made before it existed);
- f: b's v2 weights, no version named (the peer signs b's current version, v2), own data without
  label 2: untouched, with a signed `not_affected` receipt, so the request is done at the requester.

Then a *new* request (forget 3) arrives: f derived from b v2, which has not applied it, so f is
affected through v2 and applies it once. Every new version of both requests is bit-for-bit the
centralized reference (`simulations.centralized.Reference`), which asks the same core questions and
uses each model's current-version model Fisher (the second request's settings make Eq. 6 read it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import torch

from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.tensors import from_bytes, to_bytes
from simulations.centralized import Reference, SimConfig, prepare
from simulations.network import architecture, publish_stage
from simulations.peers import Peer, PeerCluster


@pytest.fixture(scope="module")
def stage():
    return prepare(SimConfig(framework="il", model="mlp", forget=(2,), seed=0, baselines=False))


def _export(peer: Peer, model_id: str, digest: str) -> dict[str, torch.Tensor]:
    return from_bytes(peer.admin.ExportModel(admin_pb2.ExportModelRequest(model_id=model_id, model_digest=digest),
                                             timeout=60).weights)


def _assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(expected), what
    for k, v in expected.items():
        assert torch.equal(got[k], v), f"{what}: {k} differs from the centralized reference"


def _wait_version(peer: Peer, model_id: str, version: int, timeout: float = 60.0) -> None:
    """Until ``peer`` knows ``version`` of ``model_id`` (its owner's receipt chain has reached it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        known = {m.model_id: m.version for m in peer.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models}
        if known.get(model_id, 0) >= version:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{peer.name} does not know version {version} of {model_id} after {timeout}s")


def test_children_are_judged_by_the_parent_version_they_derive_from(stage, tmp_path) -> None:
    ref = Reference(stage, FIUnSettings())
    first = ref.apply("forget-2", (2,))
    assert first["subgraph"] == ["g", "a", "b"]
    names = ["g", "a", "b"]
    with PeerCluster(tmp_path, [f"peer-{n}" for n in names]) as cluster:
        owners = dict(zip(names, cluster.peers, strict=True))
        v1 = publish_stage(stage, owners)
        for peer in cluster.peers:
            cluster.wait_lineage(peer, len(names))
        requester = owners["g"]
        requester.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[2], request_id="forget-2"),
                                          timeout=30)
        done = {m.model_id: m for m in cluster.wait_request(requester, "forget-2", timeout=180).models}
        b_v2 = done["b"].new_digest
        b_weights_v2 = _export(owners["b"], "b", b_v2)
        _assert_equal(b_weights_v2, first["states"]["b"], "b v2")

        # A late peer, started after the request, publishes three children of b.
        late = cluster.add("peer-late")
        cluster.wait_lineage(late, len(names))
        _wait_version(late, "b", 2)                       # f names b's current version: v2 must be known
        x, y = ref.data["b"]
        no2, narrow = y != 2, (y == 8) | (y == 9)
        children = {  # id: (weights, own data, parent version named (digest, number), version signed)
            "d": (b_weights_v2, (x, y), (b_v2, 0), 2),
            "e": ({k: v.clone() for k, v in stage.models["b"].state_dict().items()}, (x[no2], y[no2]), ("", 1), 1),
            "f": (b_weights_v2, (x[narrow], y[narrow]), ("", 0), 2),
        }
        arch = json.dumps(architecture(stage))
        for cid, (weights, (cx, cy), (digest, number), signed) in children.items():
            reply = late.admin.PublishModel(admin_pb2.PublishModelRequest(
                model_id=cid, weights=to_bytes(weights), data=to_bytes({"x": cx, "y": cy}), architecture_json=arch,
                parents=[admin_pb2.Parent(model_id="b", relation="finetune", digest=digest, version=number)]),
                timeout=120)
            (parent,) = reply.parents                     # the reply says which version was signed
            assert (parent.model_id, parent.version) == ("b", signed), cid
            assert parent.digest == (b_v2 if signed == 2 else v1["b"]), cid
            ref.add_model(cid, sorted(set(cy.tolist())), _model_of(stage, weights), (cx, cy), [("b", "finetune", signed)])
        late_ref = ref.apply("forget-2", (2,))            # d and e apply now; f is left alone
        assert late_ref["subgraph"] == ["d", "e"] and late_ref["not_affected"] == ["f"]

        cluster.wait_lineage(requester, 6)                # else forget-2 is still done there with g, a, b
        status = cluster.wait_request(requester, "forget-2", timeout=180)
        by = {m.model_id: m for m in status.models}
        assert set(by) == {"g", "a", "b", "d", "e", "f"} and status.done
        assert (by["d"].state, by["d"].discovery, list(by["d"].discovery_ancestors)) == ("applied", True, ["d"])
        assert (by["e"].state, by["e"].discovery, list(by["e"].discovery_ancestors)) == \
            ("applied", False, ["g", "a", "b"])
        f = by["f"]
        assert (f.state, f.discovery, list(f.discovery_ancestors)) == ("not_affected", False, [])
        assert f.old_digest == f.new_digest and f"b v2 ({b_v2[:12]})" in f.reason, f.reason
        for cid in ("d", "e"):
            _assert_equal(_export(late, cid, by[cid].new_digest), late_ref["states"][cid], f"{cid} after forget-2")
        f_v1 = f.old_digest
        lineage = {m.model_id: m for m in late.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models}
        assert (lineage["f"].version, lineage["f"].model_digest) == (1, f_v1)   # untouched
        shown = _cli(requester, "request", "forget-2")   # what the requester's operator reads
        assert shown.splitlines()[0] == "request forget-2: forget [2] - 5/6 models applied, 1 not affected - done"
        assert re.search(rf"^  f +inherited not_affected derived from b v2 \({b_v2[:12]}\)", shown, re.M), shown
        assert re.search(r"^f +v1 \w{12} .* parents b@v2\(finetune\)", _cli(late, "lineage"), re.M)
        receipts = requester.admin.ListReceipts(admin_pb2.ListReceiptsRequest(request_id="forget-2"), timeout=10)
        assert {(r.model_id, r.state) for r in receipts.receipts} == {
            ("g", "applied"), ("a", "applied"), ("b", "applied"), ("d", "applied"), ("e", "applied"),
            ("f", "not_affected")}

        # A new request: f derives from b v2, which has not applied it, so f is affected through v2.
        # With gamma 1 and eta 0.1, Eq. 6 reads the model Fisher (with the defaults it only zeroes
        # what the forget data touches), so the bits show whose F_j each peer used: g, a, b, d and e
        # are at v2, and must use that version's.
        paper_like = {"gamma": 1.0, "eta": 0.1}
        second = ref.apply("forget-3", (3,), FIUnSettings(**{**FIUnSettings().to_dict(), **paper_like}))
        assert set(second["subgraph"]) == {"g", "a", "b", "d", "e", "f"} and not second["not_affected"]
        reply = late.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=[3], request_id="forget-3", settings_json=json.dumps(paper_like)), timeout=30)
        assert list(reply.affected_models) == second["subgraph"]
        status = cluster.wait_request(late, "forget-3", timeout=180)     # the requester this time
        by3 = {m.model_id: m for m in status.models}
        assert all(m.state == "applied" for m in status.models) and set(by3) == set(second["subgraph"])
        assert (by3["f"].discovery, list(by3["f"].discovery_ancestors), by3["f"].old_digest) == \
            (False, ["g", "a", "b"], f_v1)
        owner_of = {**owners, "d": late, "e": late, "f": late}
        for m in status.models:  # model Fishers of the current versions, as the reference computes them
            _assert_equal(_export(owner_of[m.model_id], m.model_id, m.new_digest), second["states"][m.model_id],
                          f"{m.model_id} after forget-3")
        receipts = late.admin.ListReceipts(admin_pb2.ListReceiptsRequest(request_id="forget-3"), timeout=10)
        assert sorted(r.model_id for r in receipts.receipts) == sorted(second["subgraph"])   # once each
        _wait_version(late, "f", 2)
        lineage = {m.model_id: m for m in late.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models}
        assert (lineage["f"].version, lineage["f"].model_digest) == (2, by3["f"].new_digest)
        assert [(p.model_id, p.version, p.digest) for p in lineage["f"].parents] == [("b", 2, b_v2)]


def _cli(peer: Peer, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fiun_peer.cli", "admin", "--target", peer.admin_address, "--home",
                           str(peer.home), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _model_of(stage, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from simulations.centralized import _fresh_model

    model = _fresh_model(stage)
    model.load_state_dict(weights)
    return model.eval()
