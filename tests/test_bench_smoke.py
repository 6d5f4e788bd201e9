"""bench/ at tiny sizes: each benchmark's core function returns a sane structure (no timing
assertions: timing numbers belong in BENCHMARKS.md), the closed-form Fisher agrees with the generic
paths, pulled bytes are the served bytes, and the report writers touch only what they own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import bench_baselines, bench_fisher, bench_pull, benchmarks_md
from bench import exp_last_k_layers as lk
from simulations.centralized import SimConfig, prepare, run_fiun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    """A two-model fine-tuning chain on a slice of digits, one epoch each: seconds to train."""
    topo = tmp_path_factory.mktemp("topo") / "chain.json"
    topo.write_text(json.dumps({"nodes": [
        {"id": "r", "parents": [], "labels": list(range(10)), "share": 0.15, "epochs": 1},
        {"id": "c", "parents": ["r"], "relation": "finetune", "labels": list(range(10)), "share": 0.1, "epochs": 1},
    ]}))
    cfg = SimConfig(framework=None, topology_file=str(topo), model="mlp", forget=(2,), seed=0)
    torch.set_num_threads(1)
    return cfg, prepare(cfg)


def test_fisher_case_structure_and_agreement():
    c = bench_fisher.bench_case("mlp", 24, seed=0, rounds=1, min_sample_s=0.0)
    assert c["model"] == "mlp" and c["n"] == 24 and c["head_shape"] == [10, 128]
    assert set(c["times"]) == {"backbone", "head_features", "fisher_fwd", "closed_form", "torch_func", "naive_loop"}
    assert all(t["median_s"] > 0 for t in c["times"].values())
    assert all(r > 0 for r in c["ratios"].values())
    # float32: the three paths compute the same Fisher up to rounding
    assert c["max_rel_diff"]["torch_func_vs_closed"] < 1e-4
    assert c["max_rel_diff"]["naive_vs_closed"] < 1e-4
    assert c["target_met"] == (c["ratios"]["fisher_fwd_over_backbone"] <= bench_fisher.TARGET)


def test_pull_case_bytes_equal_and_rates_positive(tmp_path):
    c = bench_pull.bench_size(3 * bench_pull.MB // 2, seed=1, rounds=1, home=tmp_path)  # two chunks
    assert c["bytes_equal"] is True
    assert c["bytes"] == 3 * bench_pull.MB // 2
    assert set(c["mib_per_s"]) == {"grpc", "socket", "socket_sha256"}
    assert all(v > 0 for v in c["mib_per_s"].values())
    assert c["ratios"]["grpc_over_socket_time"] > 0


def test_baselines_case_on_a_tiny_graph(tiny_stage):
    cfg, stage = tiny_stage
    c = bench_baselines.bench_graph("chain", "mlp", seed=0, forget=(2,), rounds=1, fiun_repeats=1, stage=stage)
    assert c["subgraph_nodes"] == 2
    assert set(c["speedup"]) == set(bench_baselines.METHODS)
    assert all(v > 0 for v in c["seconds"].values())
    assert all(v > 0 for v in c["speedup"].values())
    assert all(c["target_met"][m] == (c["speedup"][m] >= 100) for m in bench_baselines.METHODS)


def test_last_k_at_k1_matches_the_closed_form_run(tiny_stage):
    _, stage = tiny_stage
    s = lk.SETTINGS["default"]
    ref = run_fiun(stage, (2,), s)
    closed = lk.run_fiun_k(stage, (2,), None, s)  # the experiment's reference row is run_fiun, to the bit
    for n in ref["subgraph"]:
        for name, v in ref["models"][n].state_dict().items():
            assert torch.equal(closed["models"][n].state_dict()[name], v), (n, name)
    got = lk.run_fiun_k(stage, (2,), 1, s)
    assert got["subgraph"] == ref["subgraph"] and got["parameters"] == 10 * 128 + 10
    for n in ref["subgraph"]:
        for name, v in ref["models"][n].state_dict().items():
            torch.testing.assert_close(got["models"][n].state_dict()[name], v, rtol=1e-4, atol=1e-6)
    deeper = lk.run_fiun_k(stage, (2,), 2, s)
    changed = [not torch.equal(deeper["models"]["r"].state_dict()["features.3.weight"],
                               stage.models["r"].state_dict()["features.3.weight"])]
    assert changed == [True]  # k = 2 dampens the hidden layer too


def test_results_md_section_replaces_only_its_own_markers(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# top\n\n{lk.MARKER}\n\n<!-- section:other -->\nkeep me\n<!-- /section:other -->\n")
    lk.write_results_md(f"{lk.BEGIN}\nfirst\n{lk.END}", path)
    lk.write_results_md(f"{lk.BEGIN}\nsecond\n{lk.END}", path)
    text = path.read_text()
    assert text.count(lk.BEGIN) == 1 and "second" in text and "first" not in text
    assert "keep me" in text and text.index(lk.MARKER) < text.index(lk.BEGIN)


def test_benchmarks_md_renders_from_json(tmp_path):
    fisher = {"benchmark": "fisher", "seed": 0, "command": "cmd-f", "target": 1.2, "rounds": 1, "quick": True,
              "machine": {"cpus": 2, "torch_threads": 1},
              "cases": [bench_fisher.bench_case("cnn", 8, seed=0, rounds=1, min_sample_s=0.0, naive=False)]}
    (tmp_path / "bench_fisher.json").write_text(json.dumps(fisher))
    text = benchmarks_md.render(tmp_path)
    assert "cmd-f" in text and "RELIABILITY.md" in text and "| cnn | 8 |" in text
    assert "## Reliability" not in text
    assert "bench_pull.json" in text  # a missing benchmark is named, not silently skipped
