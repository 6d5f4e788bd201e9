"""The network experiments (bench/exp_hyper_distance.py, bench/exp_scale.py) at their smallest size,
on real peer processes: the JSON has its structure, every affected model applied, the report
writers work, and no process is left behind. Timing values are not asserted (they live in
RESULTS.md)."""

from __future__ import annotations

import psutil
import pytest

from bench import exp_hyper_distance, exp_scale
from simulations import observe as _netexp


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def no_leftovers():
    before = _children()
    yield
    alive = {pid for pid in _children() - before
             if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
    assert not alive, f"processes left behind: {alive}"


def test_hyper_distance_chain_depth_2_on_real_peers(tmp_path, no_leftovers):
    result = exp_hyper_distance.run_hyper_distance(depths=(2,), shapes=("chain",), reps=1, workdir=tmp_path,
                                                   startup_timeout=180, request_timeout=120, log=lambda _: None)
    (cell,) = result["cells"]
    assert (cell["shape"], cell["depth"], cell["models"], cell["peers"]) == ("chain", 2, 3, 3)
    (run,) = cell["runs"]
    assert run["discovery"] == ["n0"] and sorted(run["affected"]) == ["n0", "n1", "n2"]
    assert run["states"] == {"n0": "applied", "n1": "applied", "n2": "applied"}
    assert cell["all_applied"] and cell["equals_centralized"]
    # The peers' clocks order the events: taken up, then applied, then the receipt at the requester.
    for m in run["affected"]:
        assert 0 <= run["received"][m] <= run["applied"][m] <= run["receipt_at_requester"][m]
    assert run["last_receipt_at_requester"] == max(run["receipt_at_requester"].values())
    assert run["all_receipts_everywhere"] >= run["last_receipt_at_requester"]
    assert set(run["by_depth"]) == {"0", "1", "2"}
    assert cell["retrain_cumulative_s"] > 0 and cell["retrain_cumulative_cpu_s"] > 0
    assert result["ratios"] == {}                  # one depth: no t(deep)/t(shallow) ratio
    assert result["load_at_start"]["cpus"] >= 1

    assert cell["connect"] == "star" and cell["connected_peers"]["max"] >= 1
    assert sum(cell["receipt_sources_at_requester"].values()) == 3   # n0's own receipt and two others
    result.update(command="CMD --seed 0", png="x.png")
    md = exp_hyper_distance.section([result])
    assert "CMD --seed 0" in md and "| chain | 2 | 3 |" in md and "x.png" in md
    png = exp_hyper_distance.plot(result, tmp_path / "hd.png", "CMD")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scale_three_peers_on_real_peers(tmp_path, no_leftovers):
    result = exp_scale.run_scale(sizes=(3,), reps=1, workdir=tmp_path, startup_timeout=180, request_timeout=120,
                                 log=lambda _: None)
    assert result["skipped"] == []
    (cell,) = result["cells"]
    assert (cell["n_peers"], cell["clients"]) == (3, 2)
    assert cell["all_applied"]
    (run,) = cell["runs"]
    assert sorted(run["affected"]) == ["c1", "c2", "g"] and sorted(run["discovery"]) == ["c1", "c2", "g"]
    lp = cell["lineage_propagation"]
    assert lp["records"] == 3 and lp["incomplete"] == []          # every v1 record reached every peer
    assert set(lp["per_record_s"]) == {"model:c1", "model:c2", "model:g"}
    assert lp["reach_all_s"]["median"] <= lp["reach_all_s"]["p99"] <= lp["reach_all_s"]["max"]
    mem = cell["memory"]
    assert mem["processes"] == 3 and mem["samples"] >= 2
    assert 0 < mem["peak_uss_mib"]["median"] <= mem["peak_rss_mib"]["max"]

    md = exp_scale.section(result, "CMD --seed 0", "x.png")
    assert "CMD --seed 0" in md and "\n| 3 |" in md


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# R\n\n<!-- network results below -->\n\n<!-- section:other -->\nkeep\n<!-- /section:other -->\n")
    _netexp.write_section("scale", "first", doc)
    _netexp.write_section("scale", "second", doc)
    text = doc.read_text()
    assert "second" in text and "first" not in text and "keep" in text
    assert text.count("<!-- section:scale -->") == 1
    assert text.index("<!-- network results below -->") < text.index("<!-- section:scale -->")


def test_percentile_is_nearest_rank():
    assert _netexp.pct(list(range(1, 101)), 99) == 99
    assert _netexp.pct([5.0], 99) == 5.0
    assert _netexp.pct([], 50) is None
