"""deploy/: the Kubernetes manifests validate against the API schemas (offline, strict), compose.yaml
is wired consistently, the Dockerfile keeps its promises, the entrypoint creates a key once, and a
peer bound to 0.0.0.0 is joined through its gRPC address (how every container bootstraps)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fiun_peer.rpc import admin_pb2
from simulations.peers import Peer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"   # the oldest release we claim (native gRPC probes are GA since 1.27)


def _kustomize_resources() -> list[dict]:
    """The documents `kubectl apply -k deploy/k8s` would send, loaded the way kustomize lists them."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_k8s_manifests_validate_strictly() -> None:
    docs = _kustomize_resources()
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_k8s_validator_rejects_a_broken_manifest() -> None:
    # The validation above can fail: a misspelt field is an error under --strict.
    sts = _by_kind(_kustomize_resources(), "StatefulSet")[0]
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_k8s_cli_validator_accepts_the_files() -> None:
    cli = Path(sys.executable).with_name("kubernetes-validate")
    files = [str(K8S / n) for n in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]]
    done = subprocess.run([str(cli), "--strict", "-k", K8S_VERSION, *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_statefulset_wiring() -> None:
    docs = _kustomize_resources()
    svc, sts = _by_kind(docs, "Service")[0], _by_kind(docs, "StatefulSet")[0]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Everyone bootstraps through pod 0 of this StatefulSet, by its stable DNS name and gRPC port.
    assert env["FIUN_BOOTSTRAP"] == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}:{ports['grpc']}"
    assert env["FIUN_ADVERTISE_GRPC"] == f"$(POD_NAME).{svc['metadata']['name']}:{ports['grpc']}"
    # Every FIUN_ variable must name a real `fiun-peer run` option (a typo would be silently ignored).
    known = _run_env_names() | {"FIUN_NAME", "FIUN_HOME"} | _entrypoint_env_names()
    assert {k for k in env if k.startswith("FIUN_")} <= known
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_renders_the_same_resources() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(f"kubectl kustomize unavailable here: {done.stderr[:200]}")
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout) if d}
    assert rendered == {(d["kind"], d["metadata"]["name"]) for d in _kustomize_resources()}


def _pod(docs: list[dict] | None = None) -> dict:
    return _by_kind(docs or _kustomize_resources(), "StatefulSet")[0]["spec"]["template"]["spec"]


def _entrypoint_env_names() -> set[str]:
    return set(re.findall(r"\$\{(FIUN_[A-Z_]+)", (DEPLOY / "entrypoint.sh").read_text()))


def test_pod_security_policy() -> None:
    """What checkov's Kubernetes checks ask of a pod, as plain assertions (checkov itself is too heavy
    for make test), plus the fsGroup trap of issue 17."""
    pod = _pod()
    sc = pod["securityContext"]
    # kubelet's default fsGroup policy makes identity.key 0660 on every mount: crash-loop on reschedule
    assert sc["fsGroup"] and sc["fsGroupChangePolicy"] == "OnRootMismatch"
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"]["drop"] == ["ALL"] and not csc.get("privileged")
        assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"]
        assert {"livenessProbe", "readinessProbe"} <= set(c)


def test_network_policy_opens_the_peer_ports_to_peers_only() -> None:
    docs = _kustomize_resources()
    (np,) = _by_kind(docs, "NetworkPolicy")
    pod_labels = _by_kind(docs, "StatefulSet")[0]["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in np["spec"]["policyTypes"]
    ports = {p["name"] for p in _pod(docs)["containers"][0]["ports"]}
    opened = {}
    for rule in np["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in ports, port  # named ports of the container, nothing else
            opened[port["port"]] = rule["from"]
    assert set(opened) == {"grpc", "p2p", "metrics"}
    for peer_port in ("grpc", "p2p"):  # peer services: only peers may reach them
        assert opened[peer_port] == [{"podSelector": {"matchLabels": np["spec"]["podSelector"]["matchLabels"]}}]
    # The admin API keeps its loopback default (`kubectl exec ... fiun-peer admin`): no port, no env.
    env = {e["name"]: e.get("value") for e in _pod(docs)["containers"][0].get("env", [])}
    assert "FIUN_ADMIN" not in env and "FIUN_INSECURE" not in env


def test_pod_disruption_budget_keeps_all_but_one_peer() -> None:
    docs = _kustomize_resources()
    (pdb,) = _by_kind(docs, "PodDisruptionBudget")
    sts = _by_kind(docs, "StatefulSet")[0]
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1 < sts["spec"]["replicas"]


def test_identity_key_and_admin_token_from_optional_secrets() -> None:
    pod = _pod()
    (container,) = pod["containers"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secrets.values()} == {"fiun-identity", "fiun-admin-token"}
    for s in secrets.values():
        assert s["optional"] is True          # without the Secrets, pods make their own key and token
        assert s["defaultMode"] & 0o077 == 0  # and no other user of the node's kubelet may read them
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    for var, volume in (("FIUN_IDENTITY_KEY_FILE", "identity"), ("FIUN_ADMIN_TOKEN_FILE", "admin-token")):
        assert mounts[volume]["readOnly"] is True and env[var].startswith(mounts[volume]["mountPath"] + "/")
        assert var in _entrypoint_env_names()
    assert env["FIUN_IDENTITY_KEY_FILE"].endswith("/$(POD_NAME).key")  # one key per pod


def _run_env_names() -> set[str]:
    from fiun_peer.cli import build_parser
    from fiun_peer.config import options, run_subparser

    return {o.env for o in options(run_subparser(build_parser()))} | {"FIUN_CONFIG"}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the x-peer anchors


def test_compose_is_wired_consistently() -> None:
    compose = _compose()
    services, volumes = compose["services"], compose["volumes"]
    peers = {n: s for n, s in services.items() if "demo" not in s.get("profiles", [])}
    assert set(peers) == {"c1", "c2", "c3", "c4", "c5", "g", "a", "b"}  # 5 FL clients, aggregate, 2 children
    host_ports = []
    env_names = _run_env_names() | {"FIUN_NAME"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert "command" in svc, name
        assert svc.get("volumes"), name
        for mount in svc["volumes"]:
            assert mount.split(":")[0] in volumes, f"{name}: undeclared volume {mount}"
        host_ports += [p.rsplit(":", 1)[0] for p in svc.get("ports", [])]
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert len(host_ports) == len(set(host_ports)), "a host port is published twice"
    homes = [s["volumes"][0].split(":")[0] for s in peers.values()]
    assert len(set(homes)) == len(homes), "two peers share a home volume"
    for name, svc in peers.items():
        env = svc["environment"]
        assert set(env) <= env_names, f"{name}: unknown FIUN_ variables {set(env) - env_names}"
        target = env["FIUN_BOOTSTRAP"]
        host, port = target.rsplit(":", 1)
        assert host in peers and port == "50051", f"{name} bootstraps through {target}"
        assert env["FIUN_ADVERTISE_GRPC"] == f"{name}:50051" and svc["hostname"] == name
    demo = services["demo"]
    assert set(demo["depends_on"]) == set(peers)
    assert {m.split(":")[1] for m in demo["volumes"]} == {f"/peers/{n}" for n in peers}


def test_dockerfile_promises() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    # the base image by digest (a tag moves); the Python minor matches requires-python and the wheels
    assert re.search(r"^FROM python:3\.11(\.\d+)?-slim(-\w+)?@sha256:[0-9a-f]{64}$", text, re.M)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text and "-c constraints.txt" in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^VOLUME \["/data"\]$', text, re.M)
    health = re.search(r"^HEALTHCHECK (.*\\\n)*.*$", text, re.M).group(0)
    assert '"fiun-peer", "health"' in health
    # the port (and TLS) come from the running daemon's run.json via FIUN_HOME, not a literal
    assert "50051" not in health and "127.0.0.1" not in health and re.search(r"^ENV FIUN_HOME=/data", text, re.M)
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M):
        assert (ROOT / src).exists(), f"COPY source {src} missing"
    assert os.access(DEPLOY / "entrypoint.sh", os.X_OK) and os.access(DEPLOY / "demo.sh", os.X_OK)


def _venv_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIUN_")}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "FIUN_HOME": str(home),
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "FIUN_GRPC": "127.0.0.1:0",
                "FIUN_P2P": "/ip4/127.0.0.1/tcp/0", **extra})
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_run_json(home: Path, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        if (home / "run.json").exists():
            return json.loads((home / "run.json").read_text())
        time.sleep(0.1)
    raise TimeoutError(log.read_text()[-3000:])


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def test_entrypoint_creates_the_key_on_first_start_only(tmp_path: Path) -> None:
    home = tmp_path / "data"
    env = _venv_env(home, FIUN_NAME="pod-0")
    ids = []
    for _ in range(2):  # first start creates the identity; a restart keeps it
        proc = _start(["sh", str(DEPLOY / "entrypoint.sh")], env, tmp_path / "peer.log")
        try:
            ids.append(_wait_run_json(home, proc, tmp_path / "peer.log")["peer_id"])
        finally:
            assert _stop(proc) == 0
    assert ids[0] == ids[1]
    assert json.loads((home / "identity.json").read_text())["name"] == "pod-0"
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (home / "config.toml").exists()  # the commented template init writes


def test_entrypoint_takes_key_and_token_from_secret_files(tmp_path: Path) -> None:
    """As kubelet mounts a Secret under fsGroup: group-readable files. The entrypoint imports them
    (the home's copies 0600) and refuses a Secret whose key is not the home's. `run` is then given a
    bad option so that no daemon starts: the import is what is under test here."""
    from fiun_peer.identity import Identity

    seed, other = bytes(range(32)), bytes(range(1, 33))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, data in (("fiun-0.key", seed), ("other.key", other), ("admin.token", b"s3cret-token\n")):
        (secrets / name).write_bytes(data)
        (secrets / name).chmod(0o440)
    home = tmp_path / "data"
    env = _venv_env(home, FIUN_NAME="fiun-0", FIUN_IDENTITY_KEY_FILE=str(secrets / "fiun-0.key"),
                    FIUN_ADMIN_TOKEN_FILE=str(secrets / "admin.token"))

    def entrypoint(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), "--sync-interval", "never"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=120)

    first = entrypoint()
    assert "invalid float value: 'never'" in first.stderr, first.stderr  # init done, then `run` refused
    assert Identity.load(home).peer_id == Identity.from_seed(seed, "x").peer_id
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (home / "admin.token").read_text().strip() == "s3cret-token"
    assert (home / "admin.token").stat().st_mode & 0o077 == 0
    wrong = entrypoint(FIUN_IDENTITY_KEY_FILE=str(secrets / "other.key"))
    assert wrong.returncode == 2 and "differs from" in wrong.stderr
    absent = entrypoint(FIUN_IDENTITY_KEY_FILE=str(secrets / "missing.key"))  # no Secret: keep the home's
    assert "differs" not in absent.stderr and "invalid float value" in absent.stderr
    assert Identity.load(home).peer_id == Identity.from_seed(seed, "x").peer_id


def test_bootstrap_by_grpc_address_to_a_wildcard_bound_peer(tmp_path: Path) -> None:
    """The container setup: the bootstrap peer listens on 0.0.0.0 and advertises no libp2p address;
    a newcomer knows only its gRPC address, learns its peer id from it, and joins."""
    cli = [sys.executable, "-m", "fiun_peer.cli"]
    procs = []
    try:
        first, second = tmp_path / "first", tmp_path / "second"
        for home in (first, second):
            subprocess.run([*cli, "init", "--home", str(home), "--name", home.name], check=True,
                           capture_output=True)
        env = _venv_env(first, FIUN_GRPC="0.0.0.0:0", FIUN_P2P="/ip4/0.0.0.0/tcp/0")
        procs.append(_start([*cli, "run"], env, tmp_path / "first.log"))
        info = _wait_run_json(first, procs[0], tmp_path / "first.log")
        port = info["grpc"].rsplit(":", 1)[1]
        assert all("/ip4/0.0.0.0/" in a for a in info["p2p"])     # nothing dialable advertised
        env = _venv_env(second, FIUN_BOOTSTRAP=f"127.0.0.1:{port}")
        procs.append(_start([*cli, "run"], env, tmp_path / "second.log"))
        info2 = _wait_run_json(second, procs[1], tmp_path / "second.log")
        newcomer = Peer("second", second, grpc=info2["grpc"], admin_address=info2["admin"])
        bootstrap = Peer("first", first, grpc=f"127.0.0.1:{port}", admin_address=info["admin"])
        deadline = time.monotonic() + 60
        linked = False
        while not linked and time.monotonic() < deadline:  # the newcomer had no multiaddr to dial
            linked = all(p.admin.Status(admin_pb2.StatusRequest(), timeout=10).connected_peers >= 1
                         for p in (newcomer, bootstrap))
            time.sleep(0.2)
        assert linked, (tmp_path / "second.log").read_text()[-3000:]
        newcomer.close_channel()
        bootstrap.close_channel()
    finally:
        for p in procs:
            _stop(p)
