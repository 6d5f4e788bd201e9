"""Operating a peer the way daemons are operated (issue 17): one daemon per home (a real second
process is refused), homes outside the working tree, admin options before or after the action,
FIUN_HOME everywhere, readable status, a quiet exit into a closed pipe, --version, `run --help`
with defaults and FIUN_* names, health that follows the configured port; and the README
walkthrough's digests and `fiun-sim export`'s publish hint checked against the code.

One real daemon serves the whole module (a start costs seconds on a shared machine)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fiun_peer.cli import peer_main
from fiun_peer.home import home_path, remove_run_file

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "fiun_peer.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIUN_")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """A running daemon: (home, its process, its run.json)."""
    home = tmp_path_factory.mktemp("op") / "alice"
    subprocess.run([*CLI, "init", "--home", str(home), "--name", "alice"], check=True, capture_output=True,
                   env=_env())
    log = home.parent / "alice.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*CLI, "run", "--home", str(home)], env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not (home / "run.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    yield home, proc, json.loads((home / "run.json").read_text())
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_second_daemon_on_a_home_in_use_is_refused(peer) -> None:
    home, proc, info = peer
    second = subprocess.run([*CLI, "run", "--home", str(home)], env=_env(), capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 2, second.stderr
    assert f"{home} is in use by pid {proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert json.loads((home / "run.json").read_text())["pid"] == proc.pid  # the first one's file, intact
    assert proc.poll() is None


def test_admin_options_after_the_action_and_a_readable_status(peer, capsys) -> None:
    home = peer[0]
    for argv in (["admin", "status", "--home", str(home)], ["admin", "--home", str(home), "status"],
                 ["admin", "--timeout", "1", "status", "--home", str(home), "--timeout", "20"]):
        assert peer_main(argv) == 0, argv
        out = capsys.readouterr().out
        assert out.startswith("peer alice  12D3KooW") and re.search(r"^  connected peers +\d+(  \(warning: not connected to any peer.*\))?$", out, re.M)
        assert "{" not in out  # no Python dict
    assert peer_main(["admin", "status", "--json", "--home", str(home)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "alice"


def test_the_admin_api_has_its_own_loopback_listener(peer, capsys) -> None:
    """Exposing the peer port does not expose admin: AdminService answers only on `--admin`
    (loopback by default); the peer port says where it went and still serves peers and health."""
    import grpc

    from fiun_peer.rpc.channel import open_channel
    from fiun_peer.rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc
    from fiun_peer.rpc.record_service import sync_records

    home, _, info = peer
    assert info["admin"].startswith("127.0.0.1:") and info["admin"] != info["grpc"]
    token = (home / "admin.token").read_text().strip()
    with open_channel(info["grpc"], token=token) as channel, pytest.raises(grpc.RpcError) as refused:
        admin_pb2_grpc.AdminServiceStub(channel).Status(admin_pb2.StatusRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "the admin API listens on its own address" in refused.value.details()
    assert isinstance(sync_records(info["grpc"], []), list)            # peers are served there
    with open_channel(info["admin"], token=token) as channel:
        status = admin_pb2_grpc.AdminServiceStub(channel).Status(admin_pb2.StatusRequest(), timeout=10)
    assert status.admin_address == info["admin"] and status.grpc_address == info["grpc"]
    assert peer_main(["admin", "--home", str(home), "status"]) == 0
    assert f"  admin            {info['admin']}" in capsys.readouterr().out


def test_fiun_home_is_honoured_by_admin_and_health(peer, capsys, monkeypatch) -> None:
    home, _, info = peer
    monkeypatch.setenv("FIUN_HOME", str(home))
    assert peer_main(["admin", "lineage"]) == 0
    assert capsys.readouterr().out.strip()  # a table, or "(no models yet)"
    # health finds the daemon's real (random) port in run.json: no hard-coded 50051
    assert peer_main(["health"]) == 0
    assert capsys.readouterr().out.startswith(f"127.0.0.1:{info['grpc'].rsplit(':', 1)[1]} (daemon): SERVING")


def test_a_closed_stdout_pipe_exits_quietly(peer) -> None:
    home = peer[0]
    proc = subprocess.Popen([*CLI, "admin", "--json", "status", "--home", str(home)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""
    done = subprocess.run(f"{shlex.join(CLI)} admin --json status --home {shlex.quote(str(home))} | head -1",
                          shell=True, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.stdout == "{\n" and "Traceback" not in done.stderr and "Broken" not in done.stderr


def test_version_and_run_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        peer_main(["--version"])
    assert info.value.code == 0 and re.fullmatch(r"fiun-peer \S+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as info:
        peer_main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert info.value.code == 0
    for needle in ("default: 5.0; env FIUN_SYNC_INTERVAL", "default: 127.0.0.1:0; env FIUN_GRPC",
                   "env FIUN_HOME", "default: off; env FIUN_LOG_JSON"):
        assert needle in text, needle


def test_bare_home_names_live_under_dot_fiun(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    assert home_path("alice") == tmp_path / ".fiun" / "alice"
    assert home_path("./alice") == Path("alice") and home_path("/srv/a") == Path("/srv/a")
    assert home_path("~/h") == tmp_path / "h"
    assert peer_main(["init", "--home", "bob", "--name", "bob"]) == 0
    assert (tmp_path / ".fiun" / "bob" / "identity.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("FIUN_HOME", "carol")  # init honours FIUN_HOME too, bare names included
    assert peer_main(["init", "--name", "carol"]) == 0
    assert (tmp_path / ".fiun" / "carol" / "admin.token").exists()
    monkeypatch.delenv("FIUN_HOME")
    capsys.readouterr()
    assert peer_main(["init", "--name", "nobody"]) == 2
    assert "give --home HOME" in capsys.readouterr().err


def test_gitignore_covers_what_the_walkthrough_creates() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["models/arch.json", "models/g/weights.safetensors", "alice/identity.key", "alice/admin.token",
             "bob/store.sqlite", "bob/run.json", "bob/daemon.lock", "carol/blobs/ab/abcdef"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(paths), done.stdout + done.stderr


# -- the README walkthrough and the export hint ------------------------------------------------------


@pytest.fixture(scope="module")
def il_stage(tmp_path_factory):
    """`fiun-sim export --framework il` (seed 0), in process: the README walkthrough's models."""
    from simulations.centralized import SimConfig, prepare
    from simulations.export import write_stage

    cfg = SimConfig(framework="il", baselines=False)
    stage = prepare(cfg)
    out = tmp_path_factory.mktemp("export") / "models"
    return cfg, stage, out, write_stage(stage, out)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readme_kernels() -> bool:
    """Whether torch runs the kernels the README's digests were made with (an Intel CPU, AVX-512):
    torch and MKL choose kernels by CPU, and another choice sums in another order (other bits)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    intel = cpuinfo.exists() and "GenuineIntel" in cpuinfo.read_text()
    return intel and torch.backends.cpu.get_cpu_capability() == "AVX512"


def test_readme_walkthrough_digests_are_what_the_code_makes(il_stage) -> None:
    """The files `fiun-sim export` writes are hashed exactly as a peer names them (sha256 of the
    weights blob); the unlearned versions come from Algorithm 1 in process, which the network tests
    hold equal to the peers' results bit for bit (the agent stores to_bytes of the same state)."""
    from fiun_peer.tensors import to_bytes
    from simulations.centralized import run_fiun

    if not _readme_kernels():
        pytest.skip("the README's digests are an Intel AVX-512 CPU's; this CPU's kernels give other bits")
    cfg, stage, out, _ = il_stage
    readme = (ROOT / "README.md").read_text()
    old = {n.id: _digest(out / n.id / "weights.safetensors") for n in stage.nodes}
    assert f"published g {old['g']}" in readme
    for n in stage.nodes:
        assert re.search(rf"^{n.id} +v1 {old[n.id][:12]} ", readme, re.M), (n.id, old[n.id])
    states = run_fiun(stage, (2,), cfg.settings)["states"]
    for n in stage.nodes:
        new = hashlib.sha256(to_bytes(states[n.id])).hexdigest()
        assert re.search(rf"^  {n.id} +discovery applied +{old[n.id][:12]} -> {new[:12]}$", readme, re.M), \
            (n.id, old[n.id][:12], new[:12])


def test_the_export_hint_is_a_command_that_works(il_stage, peer) -> None:
    _, _, out, lines = il_stage
    home = peer[0]
    hint = next(line.strip() for line in lines if "--model-id g " in line)
    assert hint.startswith("fiun-peer admin --home HOME publish ")
    argv = shlex.split(hint.replace("--home HOME", f"--home {shlex.quote(str(home))}"))[1:]
    done = subprocess.run([*CLI, *argv], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"published g {_digest(out / 'g' / 'weights.safetensors')}")


def _publish_argv(home: Path, out: Path, model_id: str, source: str, *extra: str) -> list[str]:
    return ["admin", "--home", str(home), "publish", "--model-id", model_id,
            "--weights", str(out / source / "weights.safetensors"), "--data", str(out / source / "data.safetensors"),
            "--arch", str(out / "arch.json"), *extra]


def test_publish_waits_for_parents_on_request(il_stage, peer) -> None:
    """A parent not known yet is FAILED_PRECONDITION (retrying may help; fixing the input won't), and
    `--wait-parents` retries until its lineage arrives (here: its owner publishes it meanwhile)."""
    _, _, out, _ = il_stage
    home = peer[0]
    done = subprocess.run([*CLI, *_publish_argv(home, out, "kid0", "a", "--parents", "par:finetune")], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAILED_PRECONDITION" in done.stderr, done.stderr
    assert "unknown parent model 'par'" in done.stderr and "--wait-parents" in done.stderr
    waiting = subprocess.Popen([*CLI, *_publish_argv(home, out, "kid", "a", "--parents", "par:finetune",
                                                     "--wait-parents", "120")],
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for the parents' lineage (up to 120s)" in waiting.stderr.readline()
        assert waiting.poll() is None                  # still waiting: the parent is not there
        done = subprocess.run([*CLI, *_publish_argv(home, out, "par", "g")], env=_env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        stdout, stderr = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and stdout.startswith("published kid "), stderr


def test_unlearning_labels_no_model_holds_needs_force(il_stage, peer, capsys) -> None:
    _, _, out, _ = il_stage
    home = peer[0]
    if peer_main(["admin", "--home", str(home), "lineage"]) == 0 and "\npar " not in "\n" + capsys.readouterr().out:
        assert peer_main(_publish_argv(home, out, "par", "g")) == 0  # a lineage to ask about (labels 0-5)
    capsys.readouterr()
    assert peer_main(["admin", "--home", str(home), "unlearn", "--labels", "2,42", "--id", "typo"]) == 1
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "holds label 42;" in err and "--force" in err, err
    assert peer_main(["admin", "--home", str(home), "request", "typo"]) == 1   # nothing was signed
    assert "NOT_FOUND" in capsys.readouterr().err
    assert peer_main(["admin", "--home", str(home), "unlearn", "--labels", "42", "--id", "later", "--force"]) == 0
    assert capsys.readouterr().out.startswith("request later\n")
    assert peer_main(["admin", "--home", str(home), "request", "later"]) == 0


def test_a_model_in_its_own_format_goes_through_the_cli_and_comes_back(peer, tmp_path) -> None:
    """`fiun-sim export --model hf-vit-tiny` writes an hf folder per model; its printed publish command
    works as printed, `admin export` writes the folder back (config.json and model.safetensors, the
    same bytes), and a folder with pickled weights is refused before anything is sent."""
    import json as _json

    from simulations.centralized import SimConfig, prepare
    from simulations.export import write_stage

    topo = tmp_path / "chain.json"
    topo.write_text(_json.dumps({"nodes": [{"id": "vit0", "parents": [], "labels": list(range(10)),
                                            "share": 0.05, "epochs": 1}]}))
    stage = prepare(SimConfig(framework=None, topology_file=str(topo), model="hf-vit-tiny", dataset="digits",
                              baselines=False))
    lines = write_stage(stage, tmp_path / "models")
    hint = next(line.strip() for line in lines if "--model-id vit0 " in line)
    assert "--format hf --model " in hint and "--arch" not in hint
    home = peer[0]
    argv = shlex.split(hint.replace("--home HOME", f"--home {shlex.quote(str(home))}"))[1:]
    done = subprocess.run([*CLI, *argv], env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "vit0" / "hf"
    assert done.stdout.startswith(f"published vit0 {_digest(folder / 'model.safetensors')}")
    out = tmp_path / "vit0-v1"
    done = subprocess.run([*CLI, "admin", "--home", str(home), "export", "--model-id", "vit0", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert _json.loads((out / "config.json").read_text()) == _json.loads((folder / "config.json").read_text())
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    again = [a if a != "vit0" else "vit1" for a in argv]
    done = subprocess.run([*CLI, *again], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no model.safetensors" in done.stderr and "pickled" in done.stderr


def test_stopping_never_removes_another_process_run_json(peer, tmp_path) -> None:
    # Last in the module: it stops the shared daemon. Its run.json now names another process (as
    # after a second start took over, before the home lock): a clean stop must leave it alone.
    home, proc, info = peer
    (home / "run.json").write_text(json.dumps({**info, "pid": 1}))
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert json.loads((home / "run.json").read_text())["pid"] == 1
    # and a file that names us goes
    (tmp_path / "run.json").write_text(json.dumps({"pid": os.getpid()}))
    assert remove_run_file(tmp_path) and not (tmp_path / "run.json").exists()
