"""`fiun-peer run` configuration: flags > FIUN_<OPTION> environment > TOML file > defaults, derived from
the argparse definitions, with clear errors; and a real daemon that picks the right value per layer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from fiun_peer.cli import build_parser, peer_main
from fiun_peer.config import ConfigError, commented_template, options, resolve_run, run_subparser
from fiun_peer.rpc import admin_pb2
from simulations.peers import Peer


def _resolve(argv: list[str], env: dict[str, str] | None = None):
    return resolve_run(build_parser, ["run", *argv], env or {})


def test_each_layer_wins_over_the_ones_below(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('sync-interval = 7.0\np2p = "/ip4/127.0.0.1/tcp/7001"\n'
                                          'metrics = "127.0.0.1:9001"\nlog-json = true\n')
    r = _resolve(["--home", str(tmp_path), "--sync-interval", "9"],
                 {"FIUN_SYNC_INTERVAL": "8", "FIUN_P2P": "/ip4/127.0.0.1/tcp/8001"})
    a = r.args
    assert a.sync_interval == 9.0 and r.sources["sync_interval"] == "flag"
    assert a.p2p == "/ip4/127.0.0.1/tcp/8001" and r.sources["p2p"] == "env"
    assert a.metrics == "127.0.0.1:9001" and r.sources["metrics"] == "file"
    assert a.log_json is True and r.sources["log_json"] == "file"
    assert a.grpc == "127.0.0.1:0" and r.sources["grpc"] == "default"
    assert r.config_file == tmp_path / "config.toml"


def test_home_and_config_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('bootstrap = ["peer-0:50051", "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWB4PFZMALoHTWDMAY3dhKvw49hwrds'
                   '6rHDcAGtvzSxvFV"]\n')
    r = _resolve([], {"FIUN_HOME": str(tmp_path / "h"), "FIUN_CONFIG": str(cfg)})
    assert r.args.home == tmp_path / "h"             # a required flag satisfied by the environment
    assert r.args.bootstrap[0] == "peer-0:50051" and len(r.args.bootstrap) == 2
    r = _resolve([], {"FIUN_HOME": str(tmp_path), "FIUN_BOOTSTRAP": "a:1, b:2"})
    assert r.args.bootstrap == ["a:1", "b:2"]         # lists: comma or space separated


def test_a_flag_replaces_a_list_from_below_instead_of_extending_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'requester = ["{"a" * 64}"]\n')
    r = _resolve(["--home", str(tmp_path), "--requester", "b" * 64])
    assert r.args.requester == ["b" * 64]
    assert _resolve(["--home", str(tmp_path)]).args.requester == ["a" * 64]


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    cases = [('sync-intervall = 3\n', "unknown key sync-intervall"),
             ('sync-interval = "fast"\n', "invalid value 'fast' for sync-interval"),
             ('log-json = "yes"\n', "log-json is a switch"),
             ('bootstrap = "a:1"\n', "bootstrap takes a list"),
             ('grpc = 50051\n', "expected a string"),
             ('sync-interval = \n', "not valid TOML")]
    for text, expected in cases:
        (tmp_path / "config.toml").write_text(text)
        with pytest.raises(ConfigError) as info:
            _resolve(["--home", str(tmp_path)])
        assert expected in str(info.value) and str(tmp_path / "config.toml") in str(info.value), text
    (tmp_path / "config.toml").unlink()
    with pytest.raises(ConfigError, match="environment variable FIUN_SYNC_INTERVAL"):
        _resolve(["--home", str(tmp_path)], {"FIUN_SYNC_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="does not exist"):
        _resolve(["--home", str(tmp_path), "--config", str(tmp_path / "nope.toml")])


def test_cli_reports_a_bad_config_and_exits_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.toml").write_text("colour = 'blue'\n")
    assert peer_main(["run", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key colour" in err and "Traceback" not in err
    assert not (tmp_path / "store.sqlite").exists()   # nothing started, nothing written


def test_new_flags_get_env_and_file_support_for_free(tmp_path: Path) -> None:
    def parser():
        p = build_parser()
        run_subparser(p).add_argument("--fisher-cache-mb", type=int, default=64, help="new option")
        return p

    (tmp_path / "config.toml").write_text("fisher-cache-mb = 128\n")
    assert resolve_run(parser, ["run", "--home", str(tmp_path)], {}).args.fisher_cache_mb == 128
    assert resolve_run(parser, ["run", "--home", str(tmp_path)], {"FIUN_FISHER_CACHE_MB": "256"}) \
        .args.fisher_cache_mb == 256
    with pytest.raises(ConfigError, match="expected an integer"):
        (tmp_path / "config.toml").write_text("fisher-cache-mb = 1.5\n")
        resolve_run(parser, ["run", "--home", str(tmp_path)], {})


def test_init_template_lists_every_option_at_its_default(tmp_path: Path) -> None:
    run = run_subparser(build_parser())
    template = commented_template(run)
    # Uncommenting every setting line gives a valid file that changes nothing.
    settings = "\n".join(line[2:] for line in template.splitlines() if line.startswith("# ") and " = " in line
                         and not line.startswith("#  "))
    data = tomllib.loads(settings)
    assert set(data) == {o.key for o in options(run)} - {"home"}
    (tmp_path / "config.toml").write_text(settings)
    r = _resolve(["--home", str(tmp_path)])
    defaults = _resolve(["--home", str(tmp_path / "none")])
    assert set(r.sources.values()) == {"flag", "file"}
    same = {"config": None, "home": None}
    assert vars(r.args) | same == vars(defaults.args) | same


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_daemon_takes_each_option_from_the_right_layer(tmp_path: Path) -> None:
    home = tmp_path / "peer"
    cli = [sys.executable, "-m", "fiun_peer.cli"]
    subprocess.run([*cli, "init", "--home", str(home), "--name", "layered"], check=True, capture_output=True)
    assert (home / "config.toml").read_text().startswith("# fiun-peer configuration")
    file_grpc, env_grpc, flag_grpc = (_free_port() for _ in range(3))
    file_p2p, env_p2p = _free_port(), _free_port()
    (home / "config.toml").write_text(
        f'grpc = "127.0.0.1:{file_grpc}"\np2p = "/ip4/127.0.0.1/tcp/{file_p2p}"\n'
        f'metrics = "127.0.0.1:0"\nsync-interval = 7.0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIUN_")}
    env.update(FIUN_GRPC=f"127.0.0.1:{env_grpc}", FIUN_P2P=f"/ip4/127.0.0.1/tcp/{env_p2p}",
               FIUN_SYNC_INTERVAL="8", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = open(tmp_path / "peer.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen([*cli, "run", "--home", str(home), "--grpc", f"127.0.0.1:{flag_grpc}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 90
        while not (home / "run.json").exists():
            assert proc.poll() is None, (tmp_path / "peer.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "peer.log").read_text()
            time.sleep(0.1)
        info = json.loads((home / "run.json").read_text())
        assert info["grpc"] == f"127.0.0.1:{flag_grpc}"                   # flag over env and file
        assert any(f"/tcp/{env_p2p}/" in a for a in info["p2p"])          # env over file
        assert info["config"]["sync_interval"] == 8.0                     # env over file
        assert info["metrics"].startswith("127.0.0.1:")                   # file over default (off)
        with urllib.request.urlopen(f"http://{info['metrics']}/metrics", timeout=10) as reply:
            assert b'fiun_peer_info{name="layered"} 1.0' in reply.read()
        peer = Peer("layered", home, grpc=info["grpc"], admin_address=info["admin"])
        status = peer.admin.Status(admin_pb2.StatusRequest(), timeout=10)
        assert status.grpc_address == f"127.0.0.1:{flag_grpc}" and status.name == "layered"
        peer.close_channel()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
