"""End to end: real fiun-peer processes on loopback unlearn an FL lineage, and every peer's new
weights equal the centralized reference's to the bit. (A late joiner catching up on an earlier
request, with children of every version of an unlearned model: tests/test_e2e_versions.py.)"""

from __future__ import annotations

import psutil
import pytest
import torch

from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.tensors import from_bytes
from simulations.centralized import SimConfig, prepare, run_fiun
from simulations.network import publish_stage
from simulations.peers import PeerCluster

FORGET = (2,)


@pytest.fixture(scope="module")
def stage():
    return prepare(SimConfig(framework="fl", model="mlp", forget=FORGET, seed=0))


def _children_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_fl_network_matches_centralized_bit_for_bit(stage, tmp_path):
    reference = run_fiun(stage, FORGET, FIUnSettings())
    names = [n.id for n in stage.nodes]            # c1..c5, g, a, b: one real process per model
    before = _children_pids()
    with PeerCluster(tmp_path, [f"peer-{n}" for n in names]) as cluster:
        owners = dict(zip(names, cluster.peers, strict=True))
        publish_stage(stage, owners)
        for peer in cluster.peers:                  # gossip has reached everyone before we ask
            cluster.wait_lineage(peer, len(names))

        reply = owners["c1"].admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=list(FORGET), request_id="forget-2"), timeout=30)
        assert set(reply.affected_models) == set(reference["subgraph"])
        assert set(reply.discovery_models) == set(stage.umig.discovery_nodes(FORGET))

        observer = owners["b"]                      # not the peer the request was submitted to
        done = cluster.wait_request(observer, "forget-2", timeout=180)
        assert {m.model_id for m in done.models} == set(reference["subgraph"])
        assert all(m.state == "applied" and m.new_digest != m.old_digest for m in done.models)

        for m in done.models:
            # Only the owner's credential gets the weights (Peer.admin sends the owner's token).
            weights = from_bytes(owners[m.model_id].admin.ExportModel(admin_pb2.ExportModelRequest(
                model_id=m.model_id, model_digest=m.new_digest), timeout=60).weights)
            expected = reference["states"][m.model_id]
            assert set(weights) == set(expected)
            for k, v in expected.items():
                assert torch.equal(weights[k], v), f"{m.model_id}.{k} differs from the centralized reference"

        # Re-submitting the same request id is idempotent: nothing is applied twice.
        again = owners["g"].admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=list(FORGET), request_id="forget-2"), timeout=30)
        assert again.record_id == reply.record_id
        receipts = observer.admin.ListReceipts(admin_pb2.ListReceiptsRequest(request_id="forget-2"), timeout=10)
        assert sorted(r.model_id for r in receipts.receipts) == sorted(reference["subgraph"])

        pids = {p.proc.pid for p in cluster.peers}
    leftover = {pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"}
    assert not leftover, f"peer processes left behind: {leftover}"
    assert _children_pids() <= before


def test_cli_error_is_readable(tmp_path):
    """A daemon error comes back as a readable message and a non-zero exit."""
    import subprocess
    import sys

    with PeerCluster(tmp_path, ["solo"]) as cluster:
        peer = cluster.peers[0]
        out = subprocess.run([sys.executable, "-m", "fiun_peer.cli", "admin", "--target", peer.admin_address, "--home", str(peer.home),
                              "request", "no-such-request"], capture_output=True, text=True)
        assert out.returncode != 0
        assert "NOT_FOUND" in out.stderr and "no-such-request" in out.stderr
        assert "Traceback" not in out.stderr
        out = subprocess.run([sys.executable, "-m", "fiun_peer.cli", "admin", "--target", peer.admin_address, "--home", str(peer.home),
                              "unlearn", "--labels", "2", "--settings", '{"gamma": -1}'],
                             capture_output=True, text=True)
        assert out.returncode != 0 and "INVALID_ARGUMENT" in out.stderr and "gamma" in out.stderr
        status = peer.admin.Status(admin_pb2.StatusRequest(), timeout=10)
        assert status.records == 0                  # the bad request changed nothing stored
