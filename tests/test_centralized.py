"""End to end: the real `fiun-sim centralized` CLI as a subprocess (the fastest framework, IL on the
MLP), its JSON schema and the issue's quality bounds on every node, its error paths, custom
topologies, and the determinism of Algorithm 1 in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIUN_SIM = Path(sys.executable).with_name("fiun-sim")
METRICS = {"ad_r", "ad_f", "test_ad_r", "test_ad_f", "mia"}
NODE_KEYS = {"id", "discovery", "discovery_ancestors", "original", "retrain", "fiun",
             "retrain_cumulative_seconds", "fiun_cumulative_seconds"}

# A 3-node DAG (g -> a, and both -> b by FedAvg), small and quick to train.
DAG = {"nodes": [
    {"id": "g", "parents": [], "labels": list(range(10)), "share": 0.3, "epochs": 8},
    {"id": "a", "parents": ["g"], "relation": "finetune", "labels": list(range(10)), "share": 0.2, "epochs": 4},
    {"id": "b", "parents": ["g", "a"], "relation": "aggregate", "labels": list(range(10)), "share": 0.1,
     "epochs": 0},
]}


def fiun_sim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(FIUN_SIM), "centralized", "--seed", "0", "--quiet", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check_bounds(result: dict, max_ad_f: float, min_ratio: float) -> None:
    for n in result["nodes"]:
        o, r, f = n["original"], n["retrain"], n["fiun"]
        assert f["ad_f"] <= max_ad_f, (n["id"], f)
        assert f["ad_r"] >= min_ratio * o["ad_r"], (n["id"], o, f)
        assert r["ad_f"] == 0.0, (n["id"], r)
    assert result["speedup"] > 1


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("single") / "r.json"
    p = fiun_sim("--framework", "il", "--model", "mlp", "--forget", "2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    return p, json.loads(out.read_text())


def test_single_label_schema(single):
    proc, r = single
    assert {"nodes", "fiun_seconds", "retrain_seconds", "speedup", "baselines", "config"} <= set(r)
    assert not any(k.startswith("_") for k in r)
    assert r["config"]["framework"] == "il" and r["config"]["model"] == "mlp" and r["config"]["forget"] == [2]
    assert [n["id"] for n in r["nodes"]] == ["g", "a", "b"]  # IL: label 2 is in every model's own data
    seen: list[str] = []
    for n in r["nodes"]:
        assert set(n) == NODE_KEYS
        for key in ("original", "retrain", "fiun"):
            assert set(n[key]) == METRICS
        seen.append(n["id"])  # a discovery node counts itself; parents-first order
        assert n["discovery"] and n["id"] in n["discovery_ancestors"] and set(n["discovery_ancestors"]) <= set(seen)
        assert 0 < n["fiun_cumulative_seconds"] < n["retrain_cumulative_seconds"]
    assert set(r["baselines"]) == {"finetune", "gradient_ascent", "distill"}
    for b in r["baselines"].values():
        assert {"delta_acc", "seconds", "fiun_speedup", "nodes"} <= set(b)
        assert set(b["nodes"]) == {"g", "a", "b"}
    assert r["speedup"] == pytest.approx(r["retrain_seconds"] / r["fiun_seconds"])
    assert "FIUn is" in proc.stdout and "wrote" in proc.stdout


def test_single_label_bounds(single):
    _, r = single
    check_bounds(r, max_ad_f=1.0, min_ratio=0.95)
    for n in r["nodes"]:
        assert n["original"]["ad_f"] > 90  # there was something to forget


def test_multi_label_bounds(tmp_path):
    out = tmp_path / "r.json"
    p = fiun_sim("--framework", "il", "--model", "mlp", "--forget", "2,9", "--no-baselines", "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["config"]["forget"] == [2, 9] and "baselines" not in r
    assert [n["id"] for n in r["nodes"]] == ["g", "a", "b"]  # label 2 is everywhere, 9 only in w_b's data
    check_bounds(r, max_ad_f=2.0, min_ratio=0.85)


def test_unknown_label_is_a_clear_error():
    p = fiun_sim("--forget", "42", "--no-baselines")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "forget labels [42]" in p.stderr and "0..9" in p.stderr


def test_bad_label_syntax_is_a_clear_error():
    p = fiun_sim("--forget", "two", "--no-baselines")
    assert p.returncode != 0 and "Traceback" not in p.stderr and "--forget expects" in p.stderr


def test_topology_file(tmp_path):
    topo = tmp_path / "dag.json"
    topo.write_text(json.dumps(DAG))
    out = tmp_path / "r.json"
    p = fiun_sim("--topology", str(topo), "--model", "mlp", "--forget", "2", "--no-baselines", "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["config"]["topology_file"] == str(topo)
    by_id = {n["id"]: n for n in r["nodes"]}
    assert set(by_id) == {"g", "a", "b"}
    assert by_id["b"]["discovery_ancestors"] and set(by_id["b"]["discovery_ancestors"]) <= {"g", "a", "b"}
    assert str(topo) in p.stdout


@pytest.mark.parametrize("nodes, needle", [
    ([{"id": "a", "parents": ["b"], "relation": "finetune", "labels": [0, 1, 2]},
      {"id": "b", "parents": ["a"], "relation": "finetune", "labels": [0, 1, 2]}], "parent 'b'"),
    ([{"id": "g", "parents": [], "labels": [0, 1, 2]},
      {"id": "a", "parents": ["nope"], "relation": "finetune", "labels": [0, 1, 2]}], "parent 'nope'"),
])
def test_bad_topology_is_a_clear_error(tmp_path, nodes, needle):
    topo = tmp_path / "bad.json"
    topo.write_text(json.dumps({"nodes": nodes}))
    p = fiun_sim("--topology", str(topo), "--no-baselines")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "fiun-sim: error:" in p.stderr and needle in p.stderr


def test_run_fiun_is_deterministic(tmp_path):
    from simulations.centralized import SimConfig, prepare, run_fiun

    topo = tmp_path / "dag.json"
    topo.write_text(json.dumps(DAG))
    cfg = SimConfig(framework=None, topology_file=str(topo), model="mlp", forget=(2, 9), baselines=False)
    stage = prepare(cfg)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in stage.models.items()}
    first = run_fiun(stage, cfg.forget, cfg.settings)
    second = run_fiun(stage, cfg.forget, cfg.settings)
    assert first["subgraph"] == second["subgraph"] and first["subgraph"]
    for n in first["subgraph"]:
        s1, s2 = first["states"][n], second["states"][n]
        assert s1.keys() == s2.keys()
        assert all(torch.equal(s1[k], s2[k]) for k in s1), n
        assert any(not torch.equal(s1[k], before[n][k]) for k in s1), f"{n}: FIUn changed nothing"
    for n, m in stage.models.items():  # the originals are left untouched
        assert all(torch.equal(v, before[n][k]) for k, v in m.state_dict().items())
