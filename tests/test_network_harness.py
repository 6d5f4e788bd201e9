"""`fiun-sim network` end to end on real peer processes: the JSON reports every node equal to the
in-process centralized run, with the schema's network fields; `--peers-per-process 2` works; and
every process started is gone afterwards, also when the run is terminated or a peer cannot start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from fiun_peer.core.fiun import FIUnSettings
from simulations.cli import build_parser, main, settings_from_args
from simulations.harness import assign_owners
from simulations.peers import PeerCluster

# Two roots -> FedAvg -> a fine-tuned child whose own data holds no label 2 (an inherited node).
TINY = {"nodes": [
    {"id": "r1", "labels": list(range(10)), "share": 0.25, "epochs": 5},
    {"id": "r2", "labels": list(range(10)), "share": 0.25, "epochs": 5},
    {"id": "m", "parents": ["r1", "r2"], "relation": "aggregate", "labels": list(range(10)), "share": 0.1,
     "epochs": 0},
    {"id": "c", "parents": ["m"], "relation": "finetune", "labels": [0, 1, 3, 4, 5], "share": 0.2, "epochs": 3},
]}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _processes_using(path: Path, word: str = "") -> list[int]:
    """Live processes whose command line mentions ``path`` (every peer gets its home as an argument)
    and, if given, ``word`` (e.g. "run": peer daemons, not `fiun-peer init`)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if (p.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in a for a in cmd)
                    and (not word or word in cmd)):
                out.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_assign_owners():
    ids = ["c1", "c2", "g", "a", "b"]
    assert assign_owners(ids, None) == [["c1"], ["c2"], ["g"], ["a"], ["b"]]
    assert assign_owners(ids, 3) == [["c1"], ["c2"], ["g", "a", "b"]]
    assert assign_owners(ids, 1) == [ids]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="--peers"):
            assign_owners(ids, bad)


def test_network_takes_every_centralized_option_and_paper_settings():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    opts = {c: {o for a in sub[c]._actions for o in a.option_strings} for c in ("centralized", "network")}
    assert opts["centralized"] <= opts["network"]
    assert {"--peers", "--peers-per-process", "--keep-homes"} <= opts["network"] - opts["centralized"]
    assert settings_from_args(parser.parse_args(["network"])) == FIUnSettings()
    assert settings_from_args(parser.parse_args(["network", "--paper"])) == FIUnSettings.paper()
    tuned = settings_from_args(parser.parse_args(["centralized", "--paper", "--gamma", "2"]))
    assert tuned == replace(FIUnSettings.paper(), gamma=2.0)
    assert settings_from_args(parser.parse_args(["network", "--eta", "0.5", "--no-per-label"])) == replace(
        FIUnSettings(), eta=0.5, per_label=False)


def test_network_cli_equals_centralized_and_leaves_nothing(tmp_path, capsys):
    """Four models on three peers (the last owns two), two peers sharing a process."""
    topo = tmp_path / "tiny.json"
    topo.write_text(json.dumps(TINY))
    out = tmp_path / "net.json"
    homes = tmp_path / "homes"
    before = _children()
    rc = main(["network", "--topology", str(topo), "--forget", "2", "--seed", "0", "--no-baselines",
               "--peers", "3", "--peers-per-process", "2", "--sync-interval", "1", "--keep-homes", str(homes), "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    r = json.loads(out.read_text())
    assert r["equals_centralized"] is True and r["mode"] == "network"
    assert "equals_centralized: true" in printed and "3 peers in 2 processes" in printed
    assert [n["id"] for n in r["nodes"]] == ["r1", "r2", "m", "c"]
    assert {n["id"]: n["discovery"] for n in r["nodes"]} == {"r1": True, "r2": True, "m": True, "c": False}
    net = r["network"]
    assert net["peers"] == 3 and net["processes"] == 2 and net["peers_per_process"] == 2
    assert "peer up" in (homes / "process-peer-r1.log").read_text()   # r1 and r2 share one process
    assert (homes / "peer-m_c" / "peer.log").exists()                  # m and c's peer runs alone
    assert net["owners"]["peer-m_c"] == ["m", "c"]      # the last peer owns the rest
    assert net["submitted_to"] == "peer-r1" and net["request_id"] == "fiun-sim-s0-f2"
    for n in r["nodes"]:
        assert n["equals_centralized"] is True
        assert n["new_digest"] and n["new_digest"] != n["old_digest"]
        assert 0 <= n["received_at"] <= n["applied_at"] <= n["receipt_seen_at"]
        assert n["fiun_cumulative_seconds"] == n["applied_at"]
        for key in ("original", "retrain", "fiun", "centralized_fiun"):
            assert set(n[key]) == {"ad_r", "ad_f", "test_ad_r", "test_ad_f", "mia"}
        assert n["fiun"] == n["centralized_fiun"]          # same bits, same accuracies
        assert n["fiun"]["ad_f"] == 0.0 if n["discovery"] else n["fiun"]["ad_f"] <= n["original"]["ad_f"]
    assert r["fiun_seconds"] == max(n["receipt_seen_at"] for n in r["nodes"])
    assert r["speedup"] == pytest.approx(r["retrain_seconds"] / r["fiun_seconds"])
    assert r["config"]["settings"] == FIUnSettings().to_dict() and r["config"]["topology_file"] == str(topo)
    assert not list(homes.glob("*/run.json"))            # every peer stopped cleanly
    assert _children() <= before
    assert not _processes_using(homes)


def test_sigterm_stops_every_peer(tmp_path):
    """SIGTERM to fiun-sim while its peers start: exit 143, a message, and no process left."""
    homes = tmp_path / "homes"
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "network", "--framework", "il",
                             "--no-baselines", "--keep-homes", str(homes)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "starting 3 peers" in line:
                break
        deadline = time.monotonic() + 120
        while len(_processes_using(homes, "run")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_processes_using(homes, "run")) == 3   # every peer process exists (none is up yet)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminated; every peer process was stopped" in rest
    assert not _processes_using(homes)


def test_peer_that_cannot_start_is_reported_and_others_stopped(tmp_path):
    """A broken identity key: the peer exits, the error names it with its log tail, the rest stop."""
    cluster = PeerCluster(tmp_path, ["ok", "broken"], startup_timeout=120)
    cluster.init_all(cluster.peers)
    (tmp_path / "broken" / "identity.key").write_bytes(b"not a key")
    before = _children()
    with pytest.raises(RuntimeError, match=r"peer broken exited with [1-9]") as err, cluster:
        pass
    assert "identity" in str(err.value).lower()
    assert _children() <= before
    assert not _processes_using(tmp_path)
