"""`fiun-peer`: create an identity, run the daemon, and talk to a running daemon's admin API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import grpc

DESCRIPTION = """\
A fiun-peer daemon owns models in a decentralized machine-unlearning network. Peers gossip signed
lineage records (which model inherits from which) over libp2p; when labels must be forgotten, the
discovery peers announce an unlearning Fisher, and every affected peer pulls the Fishers it needs over
gRPC, merges them (Eq. 5) and dampens its own last layer (Eq. 6). No coordinator.

  fiun-peer init  --home DIR --name NAME           create the peer's Ed25519 key and admin token (0600)
  fiun-peer run   --home DIR [--config FILE] [--grpc H:P] [--p2p MULTIADDR] [--bootstrap ADDR ...]
                  [--metrics H:P]   every option also FIUN_<OPTION> and a key in HOME/config.toml
  fiun-peer admin --home DIR | --target H:P --token-file F   status | lineage | publish ... | export ...
                  | unlearn ... | request ID | receipts
  fiun-peer health --target H:P                    exit 0 when the daemon reports SERVING
"""


def _labels(text: str) -> list[int]:
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 2,9; got {text!r}") from None
    if any(c < 0 for c in out):
        raise argparse.ArgumentTypeError("labels must be non-negative")
    return out


def _parent(text: str) -> tuple[str, str]:
    mid, _, rel = text.partition(":")
    if not mid:
        raise argparse.ArgumentTypeError(f"parent must be MODEL[:RELATION], got {text!r}")
    return mid, rel or "finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiun-peer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="create a peer home: Ed25519 identity key (mode 0600)")
    i.add_argument("--home", required=True, type=Path)
    i.add_argument("--name", required=True, help="a human-readable peer name")

    r = sub.add_parser("run", help="run the daemon (gossip, gRPC services, unlearning agent)")
    r.add_argument("--home", required=True, type=Path)
    r.add_argument("--grpc", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="gRPC bind address for admin and peer services (port 0: pick one; see HOME/run.json)")
    r.add_argument("--p2p", default="/ip4/127.0.0.1/tcp/0", metavar="MULTIADDR", help="libp2p listen address")
    r.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML config file (default: HOME/config.toml if present; env FIUN_CONFIG)")
    r.add_argument("--bootstrap", nargs="*", default=[], metavar="ADDR",
                   help="peers to join: a peer's gRPC HOST:PORT (its peer id is asked for), or a full "
                        "multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...")
    r.add_argument("--advertise-grpc", default="", metavar="HOST:PORT",
                   help="the gRPC address other peers should use (default: the bound one; for a 0.0.0.0 "
                        "bind, this host's name)")
    r.add_argument("--advertise-p2p", nargs="*", default=[], metavar="MULTIADDR",
                   help="libp2p addresses to advertise instead of the listen address, e.g. /ip4/10.0.0.5/tcp/4001")
    r.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    r.add_argument("--sync-interval", type=float, default=5.0, help="seconds between anti-entropy rounds; each round that finds nothing doubles the gap, up to 4x")
    r.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    r.add_argument("--requester", action="append", default=[], metavar="PUBLIC_KEY",
                   help="also accept unlearning requests signed by this Ed25519 public key (64 hex; repeatable). "
                        "Always accepted: this peer's key and every key that owns a model in the lineage")
    r.add_argument("--admin-cn", action="append", default=[], metavar="NAME",
                   help="with --tls-client-ca: client-certificate common names allowed to call AdminService "
                        "(repeatable; default fiun-admin). The HOME/admin.token bearer token works too")
    r.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve gRPC over TLS with this certificate chain")
    r.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert (mode 0600)")
    r.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                   help="mTLS: require client certificates signed by this CA (peers then present --tls-cert)")
    r.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="dial other peers over TLS, verifying their certificates against this CA")
    r.add_argument("--allow-peers", type=Path, metavar="FILE",
                   help="a closed network: only these peers may call record sync, push and Fisher pull. FILE holds "
                        "one Ed25519 public key (64 hex) or libp2p peer id per line, # comments; callers sign each "
                        "call with their peer key (default: open to anyone)")

    h = sub.add_parser("health", help="ask a daemon's gRPC health service; exit 0 when SERVING")
    h.add_argument("--target", default="127.0.0.1:50051", metavar="HOST:PORT")
    h.add_argument("--service", default="", help='service name ("" = the whole daemon)')
    h.add_argument("--timeout", type=float, default=5.0)
    h.add_argument("--tls-ca", type=Path, metavar="PEM", help="the daemon serves TLS: verify it against this CA")

    a = sub.add_parser("admin", help="call a running daemon's admin API")
    a.add_argument("--target", metavar="HOST:PORT", help="the daemon's gRPC address (default: from --home's run.json)")
    a.add_argument("--home", type=Path, metavar="DIR",
                   help="the peer's home: its admin.token is the credential, run.json the default --target")
    a.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file holding the admin token (mode 0600); else --home's admin.token, else $FIUN_ADMIN_TOKEN")
    a.add_argument("--tls-ca", type=Path, metavar="PEM", help="the daemon serves TLS: verify it against this CA")
    a.add_argument("--tls-cert", type=Path, metavar="PEM", help="mTLS: present this client certificate")
    a.add_argument("--tls-key", type=Path, metavar="PEM", help="mTLS: the private key of --tls-cert (mode 0600)")
    a.add_argument("--json", action="store_true", help="print replies as JSON")
    a.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds")
    asub = a.add_subparsers(dest="action", required=True)
    asub.add_parser("status", help="peer identity, addresses, record count, counters")
    asub.add_parser("lineage", help="the lineage graph this peer knows")
    pub = asub.add_parser("publish", help="register a model version owned by this peer")
    pub.add_argument("--model-id", required=True)
    pub.add_argument("--weights", required=True, type=Path, help="safetensors state dict")
    pub.add_argument("--data", required=True, type=Path, help='safetensors with "x" and "y": your own data')
    pub.add_argument("--arch", required=True,
                     help='architecture JSON or a file holding it, e.g. {"model":"mlp","in_shape":[1,8,8],'
                          '"num_classes":10}')
    pub.add_argument("--parents", nargs="*", type=_parent, default=[], metavar="MODEL[:RELATION]",
                     help="parent models with relation aggregate|finetune|incremental|distill|transfer")
    pub.add_argument("--labels", type=_labels, default=[], help="own label set (default: labels in --data)")
    ex = asub.add_parser("export", help="write the weights of a model version this peer owns to a file")
    ex.add_argument("--model-id", required=True)
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=0, help="the version number (default: the current version)")
    which.add_argument("--digest", default="", help="the version's sha256 digest")
    ex.add_argument("--out", required=True, type=Path, help="where to write the safetensors weights (mode 0600)")
    un = asub.add_parser("unlearn", help="submit an unlearning request")
    un.add_argument("--labels", required=True, type=_labels, help="labels to forget, e.g. 2,9")
    un.add_argument("--id", default="", help="request id (default: generated); requests are idempotent by id")
    un.add_argument("--settings", default="", help='FIUn settings JSON, e.g. {"gamma": 3.0}')
    rq = asub.add_parser("request", help="progress of a request: affected models, receipts, why pending")
    rq.add_argument("request_id")
    rq.add_argument("--wait", action="store_true", help="poll until every affected model has a receipt")
    rq.add_argument("--wait-timeout", type=float, default=300.0)
    rc = asub.add_parser("receipts", help="receipts this peer has seen")
    rc.add_argument("--request", default="")
    return p


def peer_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    resolved = None
    if argv[:1] == ["run"]:
        from .config import ConfigError, resolve_run

        try:
            resolved = resolve_run(build_parser, argv)
        except ConfigError as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        args = resolved.args
    else:
        args = build_parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if args.command == "init":
        from .auth import TOKEN_FILE, AuthError, create_token
        from .identity import Identity, IdentityError

        try:
            args.home.mkdir(parents=True, exist_ok=True)
            ident = Identity.create(args.home, args.name)
            create_token(args.home)
            _write_config_template(args.home)
        except (IdentityError, AuthError, OSError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        print(f"created peer {ident.name!r} in {args.home}\n  public key {ident.public_key_hex}\n"
              f"  peer id    {ident.peer_id}\n  admin token {args.home / TOKEN_FILE}")
        return 0
    if args.command == "run":
        from . import log
        from .auth import AuthError
        from .daemon import run
        from .identity import IdentityError
        from .policy import PolicyError

        log.setup(name=args.home.name, as_json=args.log_json)
        try:
            logging.getLogger("fiun_peer.config").info(
                "configuration", extra={"event": "config", "file": str(resolved.config_file or ""),
                                        "sources": ",".join(f"{k}={v}" for k, v in resolved.sources.items()
                                                            if v != "default")})
            run(args.home, grpc_bind=args.grpc, p2p_listen=args.p2p, bootstrap=args.bootstrap,
                metrics=args.metrics, advertise_grpc=args.advertise_grpc, advertise_p2p=args.advertise_p2p,
                effective_config=resolved.effective(),
                sync_interval=args.sync_interval, requesters=args.requester, admin_cns=args.admin_cn,
                tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, tls_ca=args.tls_ca,
                allow_peers=args.allow_peers)
        except (IdentityError, AuthError, PolicyError, OSError, ValueError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        return 0
    from .auth import AuthError

    try:
        return _admin(args)
    except AuthError as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"fiun-peer: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2


def _write_config_template(home: Path) -> None:
    """A commented HOME/config.toml listing every `run` option at its default (kept if present)."""
    from .config import CONFIG_FILE, commented_template, run_subparser

    path = home / CONFIG_FILE
    if not path.exists():
        path.write_text(commented_template(run_subparser(build_parser())), encoding="utf-8")


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .rpc.channel import open_channel

    tls = None
    if args.tls_ca:
        from .auth import ClientTLS

        tls = ClientTLS.from_files(args.tls_ca, None, None)
    with open_channel(args.target, tls=tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"fiun-peer: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target} {args.service or '(daemon)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _admin(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from .auth import ClientTLS, resolve_token
    from .rpc.channel import open_channel
    from .rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc

    target = args.target
    if not target:
        if args.home is None:
            raise ValueError("give --target HOST:PORT or --home DIR (a running peer's home)")
        run_file = args.home / "run.json"
        try:
            target = json.loads(run_file.read_text())["grpc"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read the peer's address from {run_file} (is it running?): {exc}") from None
    token = resolve_token(token_file=args.token_file, home=args.home)
    tls = ClientTLS.from_files(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    if tls is None and (args.tls_cert or args.tls_key):
        raise ValueError("--tls-cert/--tls-key need --tls-ca (the CA that signed the daemon's certificate)")
    stub = admin_pb2_grpc.AdminServiceStub(open_channel(target, tls=tls, token=token))
    t = args.timeout

    def show(reply, text: str) -> None:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2) if args.json else text)

    if args.action == "status":
        s = stub.Status(admin_pb2.StatusRequest(), timeout=t)
        show(s, f"peer {s.name}  {s.peer_id}\n  grpc {s.grpc_address}\n  p2p  {' '.join(s.p2p_addresses)}\n"
                f"  connected peers {s.connected_peers}, records {s.records}, models {', '.join(s.models) or '-'}\n"
                f"  counters {dict(s.counters)}")
    elif args.action == "lineage":
        r = stub.ListLineage(admin_pb2.ListLineageRequest(), timeout=t)
        rows = [f"{m.model_id:<12} v{m.version} {m.model_digest[:12]}  labels {list(m.labels)}  parents "
                f"{', '.join(f'{p.model_id}({p.relation})' for p in m.parents) or '-'}  owner {m.owner[:12]}"
                for m in r.models]
        show(r, "\n".join(rows) or "(no models yet)")
    elif args.action == "publish":
        arch = args.arch
        if not arch.lstrip().startswith("{"):
            arch = Path(arch).read_text()
        req = admin_pb2.PublishModelRequest(
            model_id=args.model_id, weights=args.weights.read_bytes(), data=args.data.read_bytes(),
            parents=[admin_pb2.Parent(model_id=m, relation=rel) for m, rel in args.parents],
            labels=args.labels, architecture_json=arch)
        r = stub.PublishModel(req, timeout=t)
        show(r, f"published {r.model_id} {r.model_digest}\n  record {r.record_id}")
    elif args.action == "export":
        from .files import write_atomic

        if args.version < 0:
            raise ValueError("--version must be >= 1 (or leave it out for the current version)")
        r = stub.ExportModel(admin_pb2.ExportModelRequest(model_id=args.model_id, model_digest=args.digest,
                                                          version=args.version), timeout=t)
        write_atomic(args.out, r.weights)  # 0600: the weights are the owner's
        r_meta = admin_pb2.ExportModelReply(model_id=r.model_id, model_digest=r.model_digest, version=r.version)
        show(r_meta, f"exported {r.model_id} v{r.version} {r.model_digest}\n  to {args.out} ({len(r.weights)} bytes)")
    elif args.action == "unlearn":
        r = stub.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=args.labels, settings_json=args.settings, request_id=args.id), timeout=t)
        show(r, f"request {r.request_id}\n  discovery models {', '.join(r.discovery_models) or '-'}\n"
                f"  affected models  {', '.join(r.affected_models) or '-'}")
    elif args.action == "request":
        return _show_request(stub, admin_pb2, args, show)
    elif args.action == "receipts":
        r = stub.ListReceipts(admin_pb2.ListReceiptsRequest(request_id=args.request), timeout=t)
        show(r, "\n".join(f"{x.request_id} {x.model_id}: {x.old_digest[:12]} -> {x.new_digest[:12]}"
                          for x in r.receipts) or "(no receipts)")
    return 0


def _show_request(stub, admin_pb2, args, show) -> int:
    deadline = time.monotonic() + args.wait_timeout
    last = ""
    while True:
        r = stub.GetRequest(admin_pb2.GetRequestRequest(request_id=args.request_id), timeout=args.timeout)
        applied = sum(m.state == "applied" for m in r.models)
        lines = [f"request {r.request_id}: forget {list(r.forget_labels)} - "
                 f"{applied}/{len(r.models)} models applied{' - done' if r.done else ''}"]
        for m in r.models:
            role = "discovery" if m.discovery else "inherited"
            detail = (f"{m.old_digest[:12]} -> {m.new_digest[:12]}" if m.state == "applied" else m.why_pending)
            lines.append(f"  {m.model_id:<12} {role:<9} {m.state:<9} {detail}")
        text = "\n".join(lines)
        if not args.wait or r.done:
            show(r, text)
            return 0
        if sys.stdout.isatty():
            if text != last:
                print(text, flush=True)
        elif lines[0] != last:
            print(lines[0], flush=True)
        last = text if sys.stdout.isatty() else lines[0]
        if time.monotonic() > deadline:
            print(f"fiun-peer: request {r.request_id} not done after {args.wait_timeout:.0f}s", file=sys.stderr)
            return 3
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(peer_main())
