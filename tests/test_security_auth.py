"""Authentication: AdminService needs a bearer token or an admin client certificate; the peer
services and health stay open; gRPC runs over TLS and mTLS; secret files must be 0600."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from record_support import serve_fisher
from security_support import CA, AgentHost

from fiun_peer import records as R
from fiun_peer.cli import peer_main
from fiun_peer.identity import Identity
from fiun_peer.rpc.auth import (
    TOKEN_FILE,
    AdminAuth,
    AuthError,
    ClientTLS,
    ServerTLS,
    create_token,
    load_token,
    resolve_token,
)
from fiun_peer.rpc.channel import open_channel
from fiun_peer.rpc.fisher_service import fetch_blob
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc
from fiun_peer.rpc.record_service import sync_records

ALICE = Identity.from_seed(bytes(range(32)), "alice")


def _status(channel: grpc.Channel, metadata=None) -> admin_pb2.StatusReply:
    return admin_pb2_grpc.AdminServiceStub(channel).Status(admin_pb2.StatusRequest(), timeout=10, metadata=metadata)


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details() or ""


def test_init_writes_a_private_token_and_run_refuses_loose_secrets(tmp_path: Path, capsys) -> None:
    home = tmp_path / "p"
    assert peer_main(["init", "--home", str(home), "--name", "p"]) == 0
    token_file = home / TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = load_token(token_file)
    assert len(token) >= 32 and token.replace("-", "").replace("_", "").isalnum()
    (tmp_path / "other").mkdir()
    assert create_token(tmp_path / "other") != token          # random per home
    assert peer_main(["init", "--home", str(home), "--name", "p"]) == 2   # never overwrites

    token_file.chmod(0o640)
    with pytest.raises(AuthError, match="chmod 600"):
        load_token(token_file)
    capsys.readouterr()
    assert peer_main(["run", "--home", str(home)]) == 2
    assert "admin token" in capsys.readouterr().err and not (home / "run.json").exists()

    token_file.chmod(0o600)
    pem = CA().issue("p")
    cert, key = pem.write(tmp_path / "tls", "p")
    key.chmod(0o644)
    assert peer_main(["run", "--home", str(home), "--tls-cert", str(cert), "--tls-key", str(key)]) == 2
    assert "TLS key" in capsys.readouterr().err
    assert peer_main(["run", "--home", str(home), "--requester", "not-a-key"]) == 2
    assert "requester" in capsys.readouterr().err


def test_resolve_token_order(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("from-file\n")
    (tmp_path / "t").chmod(0o600)
    assert resolve_token(token_file=tmp_path / "t", env={"FIUN_ADMIN_TOKEN": "env"}) == "from-file"
    assert resolve_token(env={"FIUN_ADMIN_TOKEN": " env "}) == "env"
    assert resolve_token(env={}) is None
    with pytest.raises(AuthError, match="no admin token"):
        resolve_token(home=tmp_path / "missing")


def test_admin_needs_the_token_other_services_stay_open(tmp_path: Path) -> None:
    with AgentHost(tmp_path / "h", token="s3cret-token") as host:
        rec = R.build_request(host.identity, request_id="r1", forget_labels=[1])
        host.call(host.agent.ingest, rec.envelope, source="test")
        with grpc.insecure_channel(host.target) as ch:
            code, msg = _code(lambda: _status(ch))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "admin.token" in msg
            code, msg = _code(lambda: _status(ch, [("authorization", "Bearer wrong")]))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "wrong admin token" in msg
            code, _ = _code(lambda: _status(ch, [("authorization", "Basic czNjcmV0")]))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _code(lambda: admin_pb2_grpc.AdminServiceStub(ch).GetRequest(
                admin_pb2.GetRequestRequest(request_id="r1"), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED        # every method, not only Status
            assert _status(ch, [("authorization", "Bearer s3cret-token")]).records == 1
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert sync_records(host.target, []) == [rec.envelope]   # peer services need no token
        with open_channel(host.target, token="s3cret-token") as ch:
            status = _status(ch)
        assert status.counters["admin_unauthenticated"] == 3
        assert status.counters["admin_permission_denied"] == 1


def test_mtls_admin_certificate_peer_certificate_and_no_certificate(tmp_path: Path) -> None:
    ca, other_ca = CA(), CA("someone-else")
    server, admin, peer = ca.issue("peer-a"), ca.issue("fiun-admin"), ca.issue("peer-b")
    stranger = other_ca.issue("fiun-admin")
    tls = ServerTLS(cert=server.cert, key=server.key, client_ca=ca.cert)
    with AgentHost(tmp_path / "h", token="tok", tls=tls) as host:
        digest = serve_fisher(host.store, b"fisher bytes")
        as_admin = ClientTLS(ca=ca.cert, cert=admin.cert, key=admin.key)
        as_peer = ClientTLS(ca=ca.cert, cert=peer.cert, key=peer.key)
        with open_channel(host.target, tls=as_admin) as ch:
            assert _status(ch).public_key == host.identity.public_key_hex   # the certificate is the credential
        with open_channel(host.target, tls=as_peer) as ch:
            code, msg = _code(lambda: _status(ch))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "'peer-b' is not an admin" in msg
        with open_channel(host.target, tls=as_peer, token="tok") as ch:
            assert _status(ch).name == "host"                               # or the token
        assert fetch_blob(host.target, digest, tls=as_peer) == b"fisher bytes"  # peers fetch over mTLS
        for refused in (ClientTLS(ca=ca.cert),                               # no client certificate
                        ClientTLS(ca=ca.cert, cert=stranger.cert, key=stranger.key)):  # foreign CA
            with open_channel(host.target, tls=refused, token="tok") as ch:
                assert _code(lambda ch=ch: _status(ch))[0] == grpc.StatusCode.UNAVAILABLE
        with open_channel(host.target, token="tok") as ch:                  # plaintext
            assert _code(lambda: _status(ch))[0] == grpc.StatusCode.UNAVAILABLE


def test_server_tls_without_client_certificates(tmp_path: Path) -> None:
    ca = CA()
    server = ca.issue("peer-a")
    with AgentHost(tmp_path / "h", token="tok", tls=ServerTLS(cert=server.cert, key=server.key)) as host:
        digest = serve_fisher(host.store, b"x" * 1000)
        assert fetch_blob(host.target, digest, tls=ClientTLS(ca=ca.cert)) == b"x" * 1000
        with open_channel(host.target, tls=ClientTLS(ca=ca.cert), token="tok") as ch:
            assert _status(ch).name == "host"
        with open_channel(host.target, tls=ClientTLS(ca=CA("other").cert), token="tok") as ch:
            assert _code(lambda: _status(ch))[0] == grpc.StatusCode.UNAVAILABLE   # server not trusted


def test_admin_auth_check_is_exact() -> None:
    auth = AdminAuth(token="abc", admin_cns=frozenset({"ops"}))
    assert auth.check([("authorization", "Bearer abc")], {}) is None
    assert auth.check([("authorization", "bearer abc")], {}) is None
    assert auth.check([("authorization", "Bearer abcd")], {})[0] == grpc.StatusCode.PERMISSION_DENIED
    assert auth.check([("authorization", "Bearer ab")], {})[0] == grpc.StatusCode.PERMISSION_DENIED
    assert auth.check([], {"x509_common_name": [b"ops"]}) is None
    assert auth.check([], {"x509_common_name": [b"dev"]})[0] == grpc.StatusCode.PERMISSION_DENIED
    assert auth.check([], {})[0] == grpc.StatusCode.UNAUTHENTICATED
    assert AdminAuth(token=None).check([("authorization", "Bearer ")], {})[0] == grpc.StatusCode.UNAUTHENTICATED


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fiun_peer.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_admin_credentials(tmp_path: Path) -> None:
    """`fiun-peer admin` against a real server: --home supplies address and token; without a token
    or with a wrong one the call is refused with the gRPC status, exit 1."""
    home = tmp_path / "home"
    home.mkdir()
    token = create_token(home)
    with AgentHost(tmp_path / "h", token=token) as host:
        (home / "run.json").write_text(json.dumps({"grpc": host.target}))
        ok = _cli("admin", "--home", str(home), "--json", "status")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["public_key"] == host.identity.public_key_hex
        bare = _cli("admin", "--target", host.target, "status", env={"FIUN_ADMIN_TOKEN": ""})
        assert bare.returncode == 1 and "UNAUTHENTICATED" in bare.stderr
        denied = _cli("admin", "--target", host.target, "status", env={"FIUN_ADMIN_TOKEN": "nope"})
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr


def _start(home: Path, name: str, tls: dict[str, Path], extra: list[str]) -> subprocess.Popen:
    subprocess.run([sys.executable, "-m", "fiun_peer.cli", "init", "--home", str(home), "--name", name],
                   check=True, capture_output=True)
    args = [sys.executable, "-m", "fiun_peer.cli", "run", "--home", str(home), "--sync-interval", "1",
            *(x for k, v in tls.items() for x in (f"--{k}", str(v))), *extra]
    log = open(home / "peer.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _wait_run(home: Path, proc: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / "peer.log").read_text()
        if (home / "run.json").exists():
            return json.loads((home / "run.json").read_text())
        time.sleep(0.1)
    raise TimeoutError((home / "peer.log").read_text())


def test_two_daemons_sync_records_over_mtls(tmp_path: Path) -> None:
    """Bob starts after Alice stored a request, so he can only get it by Sync (gRPC over mTLS);
    he accepts it because Alice's key is configured with --requester."""
    ca = CA()
    certs = tmp_path / "certs"
    ca_file = certs / "ca.crt"
    certs.mkdir()
    ca_file.write_bytes(ca.cert)
    admin_cert, admin_key = ca.issue("fiun-admin").write(certs, "admin")
    admin_tls = ClientTLS.from_files(ca_file, admin_cert, admin_key)
    procs = []
    try:
        tls = {}
        for name in ("alice", "bob"):
            cert, key = ca.issue(name).write(certs, name)
            tls[name] = {"tls-cert": cert, "tls-key": key, "tls-client-ca": ca_file, "tls-ca": ca_file}
        procs.append(_start(tmp_path / "alice", "alice", tls["alice"], []))
        a = _wait_run(tmp_path / "alice", procs[0])
        with open_channel(a["admin"], tls=admin_tls) as ch:
            admin_pb2_grpc.AdminServiceStub(ch).RequestUnlearning(
                admin_pb2.RequestUnlearningRequest(forget_labels=[4], request_id="over-tls", force=True),
                timeout=30)  # no model yet: a request for models that join later
            alice_key = _status(ch).public_key
        procs.append(_start(tmp_path / "bob", "bob", tls["bob"],
                            ["--requester", alice_key, "--bootstrap", *a["p2p"]]))
        b = _wait_run(tmp_path / "bob", procs[1])
        # The CLI speaks mTLS too.
        cli = _cli("admin", "--target", b["admin"], "--tls-ca", str(ca_file), "--tls-cert", str(admin_cert),
                   "--tls-key", str(admin_key), "--json", "status")
        assert cli.returncode == 0, cli.stderr
        with open_channel(b["admin"], tls=admin_tls) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _status(ch).records < 1:
                time.sleep(0.3)
            reply = stub.GetRequest(admin_pb2.GetRequestRequest(request_id="over-tls"), timeout=10)
            assert list(reply.forget_labels) == [4]
        assert "rejected_not_requester" not in _status_counters(b["admin"], admin_tls)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def _status_counters(target: str, tls: ClientTLS) -> dict[str, int]:
    with open_channel(target, tls=tls) as ch:
        return dict(_status(ch).counters)
