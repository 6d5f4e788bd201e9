"""Failures an operator must see (issue 17): a bootstrap peer that cannot be reached is a warning
that names it (not 25 s of silence with the retries at debug level), `--log-level` chooses what is
shown, `admin status` flags a peer with no connection, and a multiaddr without its peer id or a
port in use is refused at start in the operator's terms (not libp2p's "P_P2P (421)" or a raw
grpc-core line). Real daemon processes throughout."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fiun_peer.identity import Identity
from fiun_peer.pacing import FailureWatch

CLI = [sys.executable, "-m", "fiun_peer.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIUN_")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    h = tmp_path / "lonely"
    subprocess.run([*CLI, "init", "--home", str(h), "--name", "lonely"], check=True, capture_output=True, env=_env())
    return h


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def _refused(home: Path, *args: str) -> str:
    done = subprocess.run([*CLI, "run", "--home", str(home), *args], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "add_port.cc" not in done.stderr, done.stderr
    assert not (home / "run.json").exists()
    return done.stderr


def test_a_bootstrap_multiaddr_without_its_peer_id_is_refused_in_plain_words(home: Path) -> None:
    err = _refused(home, "--bootstrap", "/ip4/127.0.0.1/tcp/4001")
    assert "does not say which peer to expect: end it with /p2p/<peer id>" in err, err
    assert "P_P2P" not in err and not (home / "store.sqlite").exists()
    err = _refused(home, "--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/not-an-id")
    assert "is not a valid multiaddr" in err, err


@pytest.mark.parametrize("flag", ["--grpc", "--p2p", "--metrics"])
def test_a_port_in_use_is_refused_in_plain_words(home: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        value = f"/ip4/127.0.0.1/tcp/{port}" if flag == "--p2p" else f"127.0.0.1:{port}"
        err = _refused(home, flag, value)
    assert f"fiun-peer: error: {flag} 127.0.0.1:{port}: the port is in use by another process" in err, err


def test_a_plaintext_admin_api_beyond_loopback_is_an_explicit_choice(home: Path, tmp_path: Path) -> None:
    err = _refused(home, "--admin", "0.0.0.0:0")
    assert "--admin 0.0.0.0:0 would serve the admin API in plaintext beyond this machine" in err, err
    assert "--insecure" in err and not (home / "store.sqlite").exists()
    log = tmp_path / "insecure.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*CLI, "run", "--home", str(home), "--admin", "0.0.0.0:0", "--insecure"], env=_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (home / "run.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        status = subprocess.run([*CLI, "admin", "--home", str(home), "status"], env=_env(), capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0 and "peer lonely" in status.stdout, status.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_an_unreachable_bootstrap_peer_is_a_warning_and_status_says_alone(home: Path, tmp_path: Path) -> None:
    grpc_target = f"127.0.0.1:{_closed_port()}"
    ghost = Identity.generate("ghost").peer_id
    maddr = f"/ip4/127.0.0.1/tcp/{_closed_port()}/p2p/{ghost}"
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*CLI, "run", "--home", str(home), "--bootstrap", grpc_target, maddr,
                                 "--log-level", "warning"], env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wanted = [f"bootstrap peer {grpc_target} unreachable after 3 attempts, still retrying",
                  f"bootstrap peer {maddr} unreachable after 3 attempts, still retrying"]
        deadline = time.monotonic() + 120
        while not all(w in log.read_text() for w in wanted):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        text = log.read_text()
        assert "check --bootstrap" in text and " WARNING " in text
        assert " INFO " not in text        # --log-level warning: the configuration line is not shown
        status = subprocess.run([*CLI, "admin", "--home", str(home), "status"], env=_env(), capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "connected peers  0  (warning: not connected to any peer" in status.stdout, status.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_failure_watch_warns_once_failures_persist(caplog) -> None:
    now = [0.0]
    watch = FailureWatch(logging.getLogger("t"), "bootstrap peer X", event="e", hint="check it", every=60,
                         clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="t")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert [watch.failed("refused") for _ in range(4)] == [False, False, True, False]
    assert warnings() == ["bootstrap peer X unreachable after 3 attempts, still retrying: refused; check it"]
    now[0] = 61.0
    assert watch.failed("refused") and len(warnings()) == 2      # again after `every` seconds
    watch.succeeded()
    assert caplog.records[-1].getMessage() == "bootstrap peer X reached after 5 failed attempts"
    assert [watch.failed("x") for _ in range(3)] == [False, False, True]   # counting starts over
