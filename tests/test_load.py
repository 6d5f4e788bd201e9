"""Load: mixed admin calls from concurrent clients against one real peer, and the gossip burst of
request records they cause. No call fails and no record is lost. (Latency is reported by
bench/load_admin.py, never asserted.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load_admin


def _check(r: dict, calls: int, requests: int) -> None:
    assert r["errors"] == 0, r["error_samples"]
    assert r["ok_calls"] == calls
    assert r["records_published"] == requests
    assert r["lost"] == 0 and r["records_at_bob"] == requests
    assert r["alice_records"] >= requests + 1          # every request plus the model's lineage


def test_admin_load_and_gossip_burst_small(tmp_path: Path) -> None:
    r = load_admin.run_load(tmp_path, calls=160, clients=8, requests=40)
    _check(r, 160, 40)


@pytest.mark.slow
def test_admin_load_and_gossip_burst_full(tmp_path: Path) -> None:
    r = load_admin.run_load(tmp_path, calls=2000, clients=8, requests=500)
    _check(r, 2000, 500)


def test_call_mix_is_exact() -> None:
    plan = load_admin._plan(100, 30, seed=1)
    assert len(plan) == 100 and plan.count("RequestUnlearning") == 30
    assert plan != load_admin._plan(100, 30, seed=2)
