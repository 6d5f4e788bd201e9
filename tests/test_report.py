"""simulations/report.py (table, quality bar, JSON writer) and bench/results_md.py (RESULTS.md) on
small hand-built result dicts, so every asserted number can be checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import network_md, results_md
from simulations.report import format_table, json_ready, quality, write_json

ROOT = Path(__file__).resolve().parents[1]


rmd = results_md


def ev(ad_r, ad_f, mia=10.0):
    return {"ad_r": ad_r, "ad_f": ad_f, "test_ad_r": ad_r, "test_ad_f": ad_f, "mia": mia}


def node(nid, orig, retr, fiun, *, discovery=True, rt=1.0, ft=0.001):
    return {"id": nid, "discovery": discovery, "discovery_ancestors": [nid], "original": ev(*orig),
            "retrain": ev(*retr), "fiun": ev(*fiun), "retrain_cumulative_seconds": rt,
            "fiun_cumulative_seconds": ft}


def run(framework, model, forget, nodes, *, fiun_s=0.01, retrain_s=2.0, baselines=True):
    r = {"nodes": nodes, "fiun_seconds": fiun_s, "retrain_seconds": retrain_s, "speedup": retrain_s / fiun_s,
         "config": {"framework": framework, "topology_file": None, "dataset": "digits", "model": model,
                    "forget": list(forget), "seed": 0,
                    "settings": {"estimator": "empirical", "tau": 1.0, "gamma": 3.0, "eta": 0.0,
                                 "normalize": "none", "per_label": True}}}
    if baselines:
        r["baselines"] = {
            "finetune": {"delta_acc": 0.5, "seconds": 1.0, "fiun_speedup": 1.0 / fiun_s, "nodes": {}},
            "gradient_ascent": {"delta_acc": 0.2, "seconds": 0.1, "fiun_speedup": 0.1 / fiun_s, "nodes": {}},
            "distill": {"delta_acc": None, "seconds": 3.0, "fiun_speedup": 3.0 / fiun_s, "nodes": {}},
        }
    return r


def single_ok():
    # FIUn means: AD_r 98.0, AD_f 0.5; ratio 98/100 and 96/98 -> mean 97.99 %
    return run("il", "mlp", (2,), [
        node("g", (100.0, 100.0), (100.0, 0.0), (98.0, 0.0), rt=0.5, ft=0.002),
        node("a", (98.0, 100.0), (98.5, 0.0), (98.0, 1.0), discovery=False, rt=1.0, ft=0.003),
    ], fiun_s=0.005, retrain_s=1.0)  # 200x


def multi_fail():
    # node b: AD_f 3.0 > 2 and AD_r 80/100 = 0.8 < 0.85; FIUn means: AD_r 88.0, AD_f 1.5
    return run("fl", "cnn", (1, 4, 6, 8), [
        node("g", (100.0, 100.0), (100.0, 0.0), (96.0, 0.0)),
        node("b", (100.0, 99.0), (99.0, 0.0), (80.0, 3.0)),
    ], fiun_s=0.1, retrain_s=5.0)  # 50x


def doc(runs, **settings):
    return {"settings": {"estimator": "empirical", "gamma": 3.0, "center": True, **settings}, "seed": 0,
            "runs": runs}


# ---------------------------------------------------------------- simulations.report

def test_quality_single_label_bounds():
    q = quality(single_ok())
    assert q["ok"] and (q["max_ad_f"], q["min_ad_r_ratio"]) == (1.0, 0.95)
    assert q["nodes"]["a"]["ad_r_ratio"] == pytest.approx(98.0 / 98.0)
    r = single_ok()
    r["nodes"][1]["fiun"]["ad_f"] = 1.01  # just over 1 %
    q = quality(r)
    assert not q["ok"] and q["nodes"]["g"]["ok"] and not q["nodes"]["a"]["ok"]
    r = single_ok()
    r["nodes"][0]["fiun"]["ad_r"] = 94.9  # 94.9 / 100 < 0.95
    assert not quality(r)["nodes"]["g"]["ok"]


def test_quality_multi_label_bounds_and_override():
    q = quality(multi_fail())
    assert (q["max_ad_f"], q["min_ad_r_ratio"]) == (2.0, 0.85)
    assert q["nodes"]["g"]["ok"] and not q["nodes"]["b"]["ok"] and not q["ok"]
    assert q["nodes"]["b"]["ad_r_ratio"] == pytest.approx(0.8)
    # the same numbers judged by the single-label bar: g (AD_r 96 %) passes, b still fails
    q1 = quality(multi_fail(), single_label=True)
    assert q1["max_ad_f"] == 1.0 and q1["nodes"]["g"]["ok"] and not q1["nodes"]["b"]["ok"]


def test_quality_handles_missing_values():
    r = single_ok()
    r["nodes"][0]["original"]["ad_r"] = 0.0  # no ratio defined
    r["nodes"][1]["fiun"]["ad_f"] = None
    q = quality(r)
    assert q["nodes"]["g"]["ad_r_ratio"] is None and q["ok"]


def test_format_table_rows_totals_and_baselines():
    r = single_ok()
    r["nodes"][0]["fiun"]["mia"] = None
    text = format_table(r)
    lines = text.splitlines()
    assert "forget labels [2]" in lines[0] and "seed 0" in lines[0] and "gamma=3.0" in lines[0]
    g_row = next(ln for ln in lines if ln.startswith("g "))
    a_row = next(ln for ln in lines if ln.startswith("a "))
    assert "discovery" in g_row and "inherited" in a_row
    assert "98.00" in g_row and "n/a" in g_row  # FIUn AD_r, missing MIA
    assert "0.500 / 0.0020" in g_row
    assert "FIUn is 200x faster" in text
    fiun_line = next(ln for ln in lines if ln.startswith("FIUn ") and ln.rstrip().endswith("1x"))
    assert "0.975" in fiun_line  # mean of (98-0)/100 and (98-1)/100
    distill = next(ln for ln in lines if ln.startswith("distill"))
    assert "n/a" in distill and "600x" in distill
    assert "method" not in format_table(run("il", "mlp", (2,), r["nodes"], baselines=False))


def test_json_ready_and_write_json(tmp_path):
    r = {**single_ok(), "_stage": object(), "_fiun": {"x": 1}}
    clean = json_ready(r)
    assert not any(k.startswith("_") for k in clean) and clean["nodes"] == r["nodes"]
    assert "_stage" in r  # the input is not modified
    path = tmp_path / "r.json"
    write_json(r, path)
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == json.loads(json.dumps(clean))
    assert list(json.loads(text)) == sorted(clean)


# ---------------------------------------------------------------- bench/results_md.py

def test_cell_summary_numbers():
    c = rmd.cell_summary(single_ok())
    assert c["fiun_ad_r"] == pytest.approx(98.0) and c["fiun_ad_f"] == pytest.approx(0.5)
    assert c["ratio_pct"] == pytest.approx((98.0 + 100.0) / 2)
    assert c["worst_ad_f"] == 1.0 and c["min_ratio"] == pytest.approx(0.98)
    assert c["retrain_ad_r"] == pytest.approx(99.25) and c["retrain_ad_f"] == 0.0
    assert c["mia"] == (10.0, 10.0, 10.0) and c["speedup"] == pytest.approx(200.0)
    assert c["ok"] and c["single"] and c["failing_nodes"] == {}
    m = rmd.cell_summary(multi_fail())
    assert not m["ok"] and list(m["failing_nodes"]) == ["b"] and m["bar"] == (2.0, 0.85)


def test_headline_averages_per_cell():
    other = single_ok()
    for n in other["nodes"]:
        n["fiun"]["ad_r"], n["fiun"]["ad_f"] = 90.0, 0.0  # fails the 95 % bar on g (0.90)
    cells = [rmd.cell_summary(r) for r in (single_ok(), other, multi_fail())]
    h = rmd.headline(cells)
    assert (h["cells"], h["met"]) == (3, 1)
    assert h["single"]["cells"] == 2 and h["single"]["met"] == 1
    assert h["single"]["ad_r"] == pytest.approx((98.0 + 90.0) / 2)
    assert h["single"]["ad_f"] == pytest.approx((0.5 + 0.0) / 2)
    assert h["multi"]["ad_r"] == pytest.approx(88.0) and h["multi"]["ad_f"] == pytest.approx(1.5)
    assert h["speedup_met"] == 2  # 200x, 200x, 50x
    table = rmd.headline_table(h)
    assert "| single label | 1 / 2 | 0.25 | 94.00 |" in table and "94.53" in table and "84.77" in table


def test_render_sections_and_not_met():
    text = rmd.render(doc([single_ok(), multi_fail()]))
    assert ".venv/bin/python bench/results_centralized.py --seed 0 --out results/centralized.json" in text
    assert "| gamma | 3.0 |" in text
    assert "**1 of 2 cells meet the quality bar.**" in text
    assert "| il | mlp | {2} | 98.00 | 0.50 | 99.00 | 1.00 | 0.980 |" in text
    assert "| fl | cnn | {1,4,6,8} | 88.00 | 1.50 |" in text and "| **no** |" in text
    not_met = text.split("## Where targets are not met", 1)[1]
    assert "fl / cnn / C_f = {1,4,6,8}" in not_met
    assert "w_b: AD_f 3.00% > 2%, AD_r ratio 0.800 < 0.85" in not_met
    assert "il / mlp / C_f = {2}**" not in not_met  # passing cell not listed as failing
    assert "1 of 2 cells meet it" in not_met  # speed-up: 200x yes, 50x no
    assert "fl / cnn / C_f = {1,4,6,8}: 50×" in not_met
    assert "## Paper-exact" not in text
    assert text.rstrip().endswith(rmd.MARKER)


def test_node_tables_paper_style():
    text = rmd.node_tables([single_ok(), multi_fail()])
    assert "#### il / mlp" in text and "#### fl / cnn" in text
    il = text.split("#### fl / cnn")[0]
    assert "orig. w_g | orig. w_a | orig. w_b" not in il  # only nodes present: g, a
    assert "| {2} | AD_r ↑ | 100.00 | 98.00 | 100.00 | 98.50 | 98.00 | 98.00 | 0.500 | 1.000 | 2.00 | 3.00 |" in il
    fl = text.split("#### fl / cnn")[1]
    assert "FIUn w_g | FIUn w_b" in fl
    # custom topology without g/a/b: every node, in order
    r = run("chain", "mlp", (2,), [node("n0", (99.0, 99.0), (99.0, 0.0), (97.0, 0.0)),
                                   node("n1", (98.0, 99.0), (98.0, 0.0), (96.0, 0.0))])
    assert rmd.reported_nodes([r]) == ["n0", "n1"]
    # forget sets outside {2} and {1,4,6,8} are not rendered
    assert rmd.node_tables([run("il", "mlp", (5,), single_ok()["nodes"])]) == ""


def test_baselines_table_means_and_speedups():
    a, b = single_ok(), single_ok()
    b["fiun_seconds"], b["retrain_seconds"] = 0.015, 3.0
    rows = {m: (d, s, x) for m, d, s, x in rmd.baseline_rows([a, b])}
    assert rows["FIUn"][1] == pytest.approx(0.01) and rows["FIUn"][2] == 1.0
    assert rows["re-training"][1] == pytest.approx(2.0) and rows["re-training"][2] == pytest.approx(200.0)
    assert rows["finetune"][0] == pytest.approx(0.5) and rows["finetune"][2] == pytest.approx(100.0)
    assert rows["distill"][0] is None
    table = rmd.baselines_table([a, b])
    assert "| il | mlp | gradient_ascent | 0.200 | 0.1000 | 10× |" in table
    assert "| il | mlp | distill | – | 3.0000 | 300× |" in table
    assert rmd.baselines_table([run("il", "mlp", (2,), a["nodes"], baselines=False)]).startswith("_No baselines")


def test_render_with_paper_side_by_side():
    paper_run = multi_fail()
    paper_run["nodes"][1]["fiun"]["ad_r"], paper_run["nodes"][1]["fiun"]["ad_f"] = 90.0, 0.0  # passes
    text = rmd.render(doc([single_ok(), multi_fail()]),
                      doc([single_ok(), paper_run], gamma=1.0, center=False))
    assert "--paper --out results/centralized_paper.json" in text
    section = text.split("## Paper-exact settings vs ours", 1)[1]
    assert "| gamma | 3.0 | 1.0 |" in section and "| center | True | False |" in section
    assert "| estimator |" not in section.split("What our additions")[0]  # equal settings not listed
    assert "| cells meeting the bar | 1 / 2 | 2 / 2 |" in section
    assert "| multi-label: avg AD_r | 88.00 | 93.00 |" in section
    assert "| fl | cnn | {1,4,6,8} | 88.00 | 1.50 | 0.800 | no | 93.00 | 0.00 | 0.900 | yes |" in section
    assert "Quality bar (paper-exact settings)**: 2 of 2 cells meet it." in section


def test_write_keeps_text_after_marker_and_cli(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("old header\n" + rmd.MARKER + "\n## Network\nkept\n")
    src = tmp_path / "c.json"
    src.write_text(json.dumps(doc([single_ok()])))
    assert rmd.main([str(src), "--out", str(out)]) == 0
    text = out.read_text()
    assert "old header" not in text and text.count(rmd.MARKER) == 1
    assert text.endswith(rmd.MARKER + "\n## Network\nkept\n")
    assert "**1 of 1 cells meet the quality bar.**" in text
    assert rmd.main([str(tmp_path / "missing.json")]) == 2


def test_failures_section_compact_table():
    cells = [rmd.cell_summary(r) for r in (single_ok(), multi_fail())]
    text = rmd.failures_section(cells, "paper-exact settings", per_node=False)
    assert "**Quality bar (paper-exact settings)**: 1 of 2 cells meet it." in text
    assert "| fl | cnn | {1,4,6,8} | 88.00 | 1.50 | 3.00 | 0.800 | 1 / 2 |" in text
    assert "w_b:" not in text and "| il | mlp | {2} |" not in text


def test_speedup_lines_and_mlp_note():
    slow = single_ok()
    slow["fiun_seconds"], slow["retrain_seconds"], slow["speedup"] = 0.02, 1.0, 50.0
    cells = [rmd.cell_summary(r) for r in (slow, single_ok(), multi_fail())]
    lines = rmd.speedup_lines(cells)
    assert len(lines) == 2  # 50x (il/mlp) and 50x (fl/cnn); 200x passes
    assert lines[0] == ("- il / mlp / C_f = {2}: 50× (re-training 1.000 s for the sub-graph, FIUn 20.00 ms = "
                        "10.00 ms per node over 2 nodes; 100× would need ≤ 5.00 ms per node)")
    note = rmd.speedup_note(cells)
    assert "1.00–1.00 s" in note and "10.00–10.00 ms per node in the 1 MLP cells" in note
    assert "1 of 2 MLP cells reach it" in note and "0 of 1 cells reach it" in note
    assert rmd.speedup_note([rmd.cell_summary(single_ok())]) == ""


# ---------------------------------------------------------------- network runs (fiun-sim network)

def network_run(equal_b=True):
    r = single_ok()  # nodes g (discovery), a (inherited)
    times = {"g": (0.05, 0.25, 0.30), "a": (0.10, 0.75, 0.75)}
    for n in r["nodes"]:
        recv, applied, seen = times[n["id"]]
        n.update({"received_at": recv, "applied_at": applied, "receipt_seen_at": seen,
                  "fiun_cumulative_seconds": applied, "centralized_fiun": dict(n["fiun"]),
                  "centralized_fiun_cumulative_seconds": 0.002, "owner": f"peer-{n['id']}",
                  "equals_centralized": n["id"] != "a" or equal_b})
    r["centralized_fiun_seconds"], r["fiun_seconds"] = 0.005, 0.75
    r["speedup"] = r["retrain_seconds"] / r["fiun_seconds"]
    r["equals_centralized"] = equal_b
    r["network"] = {"peers": 2, "processes": 1, "peers_per_process": 2, "submitted_to": "peer-g",
                    "request_id": "fiun-sim-s0-f2", "owners": {"peer-g": ["g"], "peer-a": ["a"]}}
    return r


def test_format_table_network_columns_and_summary():
    text = format_table(network_run())
    lines = text.splitlines()
    assert "FIUn (network)" in lines[3] and "peer times (s)" in lines[3] and "=central" in lines[3]
    g_row = next(ln for ln in lines if ln.startswith("g "))
    a_row = next(ln for ln in lines if ln.startswith("a "))
    assert "0.500 / 0.2500" in g_row and g_row.split("|")[-2].split() == ["0.0500", "0.2500"]
    assert a_row.split("|")[-2].split() == ["0.1000", "0.7500"] and a_row.split("|")[-1].strip() == "yes"
    assert "2 peers in 1 processes" in text and "sent to peer-g" in text
    assert "equals_centralized: true" in text and "2/2 nodes" in text
    assert "FIUn on the network 0.750 s" in text and "in-process 0.0050 s" in text
    assert "network FIUn is 1x faster" in text  # 1.0 s / 0.75 s
    bad = format_table(network_run(equal_b=False))
    assert "equals_centralized: FALSE" in bad and "1/2 nodes" in bad
    assert next(ln for ln in bad.splitlines() if ln.startswith("a ")).split("|")[-1].strip() == "NO"
    # a node whose owner never reported a time prints n/a
    r = network_run()
    r["nodes"][0]["received_at"] = None
    assert "n/a" in next(ln for ln in format_table(r).splitlines() if ln.startswith("g ")).split("|")[-2]
    assert "peer times" not in format_table(single_ok())  # centralized tables unchanged


def test_write_json_keeps_network_fields(tmp_path):
    path = tmp_path / "net.json"
    write_json({**network_run(), "_stage": object()}, path)
    back = json.loads(path.read_text())
    assert back["equals_centralized"] is True and back["network"]["processes"] == 1
    assert [(n["received_at"], n["applied_at"], n["equals_centralized"]) for n in back["nodes"]] == [
        (0.05, 0.25, True), (0.10, 0.75, True)]


def _load_network_md():
    return network_md


def test_network_md_section_replaced_between_markers_only(tmp_path):
    nmd = _load_network_md()
    r = network_run()
    r["quality"] = quality(r)
    doc = {"seed": 0, "peers_per_process": 1, "runs": [r], "overlap_runs": []}
    out = tmp_path / "RESULTS.md"
    out.write_text(f"top\n{nmd.MARKER}\n\n<!-- section:scale -->\nother helper\n<!-- /section:scale -->\n")
    nmd.write_section(out, nmd.render(doc, []))
    first = out.read_text()
    assert first.startswith(f"top\n{nmd.MARKER}\n\n<!-- section:scale -->\nother helper\n<!-- /section:scale -->")
    assert first.count(nmd.BEGIN) == 1 and first.rstrip().endswith(nmd.END)
    assert "**1 of 1 network runs equal the centralized run bit for bit; 1 of 1 meet the quality bar.**" in first
    assert "| il | mlp | {2} | 2 | yes (2/2) |" in first and "| 0.0050 | 0.75 | 1.00 | 1.3× |" in first
    assert "| {2} | AD_r ↑ | 100.00 | 98.00 |" in first and "0.250 | 0.750 |" in first  # per-node applied_at
    # a second write replaces our section and nothing else, even with text after it
    out.write_text(first + "tail kept\n")
    r["nodes"][1]["equals_centralized"], r["equals_centralized"] = False, False
    nmd.write_section(out, nmd.render(doc, []))
    second = out.read_text()
    assert second.count(nmd.BEGIN) == 1 and second.endswith("tail kept\n") and "other helper" in second
    assert "**0 of 1 network runs equal" in second and "**no** (1/2)" in second
