"""`/metrics` of real peers, scraped over HTTP before and after an unlearning request: the counters
move (records by kind, Fisher bytes pulled, requests by state, model versions, apply latency), and
a rejected record is counted by its reason."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fiun_peer.binds import host_port
from fiun_peer.models import build_model
from fiun_peer.rpc import admin_pb2
from fiun_peer.rpc.record_service import push_record
from fiun_peer.tensors import to_bytes
from simulations.peers import Peer, PeerCluster

ARCH = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}


def scrape(peer: Peer) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a real HTTP GET of the peer's /metrics."""
    address = json.loads((peer.home / "run.json").read_text())["metrics"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _model_and_data(seed: int) -> tuple[bytes, bytes]:
    model = build_model("mlp", (1, 8, 8), 10, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(60, 1, 8, 8, generator=g)
    y = torch.arange(60) % 10                     # every label, so both models are discovery nodes
    return to_bytes(model.state_dict()), to_bytes({"x": x, "y": y})


def test_metrics_move_after_an_unlearning_request(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FIUN_METRICS", "127.0.0.1:0")   # every peer: metrics on a free port (env layer)
    with PeerCluster(tmp_path, ["root-owner", "child-owner"]) as cluster:
        root, child = cluster.peers
        weights, data = _model_and_data(0)
        root.admin.PublishModel(admin_pb2.PublishModelRequest(
            model_id="g", weights=weights, data=data, architecture_json=json.dumps(ARCH)), timeout=120)
        cluster.wait_lineage(child, 1)
        weights, data = _model_and_data(1)
        child.admin.PublishModel(admin_pb2.PublishModelRequest(
            model_id="a", weights=weights, data=data, architecture_json=json.dumps(ARCH),
            parents=[admin_pb2.Parent(model_id="g", relation="finetune")]), timeout=120)
        cluster.wait_lineage(root, 2)

        before = scrape(child)
        assert before[("fiun_records_received_total", (("kind", "lineage"),))] == 2
        assert before[("fiun_model_version", (("model", "a"),))] == 1
        assert before[("fiun_requests", (("state", "applied"),))] == 0
        assert before[("fiun_fisher_bytes_pulled_total", ())] == 0
        assert before[("fiun_apply_seconds_count", ())] == 0
        assert before[("fiun_peer_info", (("name", "child-owner"),))] == 1

        root.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=[2], request_id="forget-2"), timeout=60)
        done = cluster.wait_request(child, "forget-2", timeout=180)
        assert {m.model_id for m in done.models} == {"g", "a"}

        after = scrape(child)
        assert after[("fiun_records_received_total", (("kind", "request"),))] == 1
        assert after[("fiun_records_received_total", (("kind", "announcement"),))] == 2
        assert after[("fiun_records_received_total", (("kind", "receipt"),))] == 2
        assert after[("fiun_records_received_total", (("kind", "lineage"),))] == 4   # + the new versions
        assert after[("fiun_model_version", (("model", "a"),))] == 2
        assert after[("fiun_requests", (("state", "applied"),))] == 1
        assert after[("fiun_requests_known", ())] == 1
        assert after[("fiun_fisher_bytes_pulled_total", ())] > 0   # g's unlearning Fisher, pulled from root
        assert after[("fiun_apply_seconds_count", ())] == 1 and after[("fiun_apply_seconds_sum", ())] > 0
        assert after[("fiun_request_to_apply_seconds_count", ())] == 1
        assert after[("fiun_gossip_peers", ())] >= 1 and after[("fiun_known_peers", ())] == 1
        assert scrape(root)[("fiun_model_version", (("model", "g"),))] == 2

        # A forged record pushed over gRPC: refused, and counted under its reason.
        assert push_record(child.grpc, b"not an envelope")[0] is False
        rejected = scrape(child)
        assert rejected[("fiun_records_rejected_total", (("reason", "malformed"),))] == 1
        assert rejected[("fiun_records_stored", ())] == after[("fiun_records_stored", ())]


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:notaport", "127.0.0.1:70000", ":"])
def test_host_port_refuses_malformed_addresses(bind) -> None:
    with pytest.raises(OSError, match="--metrics wants HOST:PORT"):
        host_port(bind, "--metrics")


def test_host_port() -> None:
    assert host_port("127.0.0.1:9464", "--metrics") == ("127.0.0.1", 9464)
    assert host_port(":0", "--metrics") == ("0.0.0.0", 0)


def test_bad_metrics_address_is_a_clear_error(tmp_path) -> None:
    cli = [sys.executable, "-m", "fiun_peer.cli"]
    subprocess.run([*cli, "init", "--home", str(tmp_path), "--name", "x"], check=True, capture_output=True)
    out = subprocess.run([*cli, "run", "--home", str(tmp_path), "--metrics", "127.0.0.1:notaport"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--metrics wants HOST:PORT" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "store.sqlite").exists()
