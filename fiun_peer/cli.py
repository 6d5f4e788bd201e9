"""`fiun-peer`: create an identity, run the daemon, and talk to a running daemon's admin API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc

DESCRIPTION = """\
A fiun-peer daemon owns models in a decentralized machine-unlearning network. Peers gossip signed
lineage records (which model inherits from which) over libp2p; when labels must be forgotten, the
discovery peers announce an unlearning Fisher, and every affected peer pulls the Fishers it needs over
gRPC, merges them (Eq. 5) and dampens its own last layer (Eq. 6). No coordinator.

  fiun-peer init  --home DIR --name NAME           create the peer's Ed25519 key (0600)
  fiun-peer run   --home DIR [--grpc H:P] [--p2p MULTIADDR] [--bootstrap MULTIADDR ...]
  fiun-peer admin --target H:P status | lineage | publish ... | unlearn ... | request ID [--wait]
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
    r.add_argument("--bootstrap", nargs="*", default=[], metavar="MULTIADDR",
                   help="peers to join, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...")
    r.add_argument("--sync-interval", type=float, default=5.0, help="seconds between anti-entropy syncs")
    r.add_argument("--log-json", action="store_true", help="one JSON object per log line")

    a = sub.add_parser("admin", help="call a running daemon's admin API")
    a.add_argument("--target", required=True, metavar="HOST:PORT", help="the daemon's gRPC address")
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
    args = build_parser().parse_args(argv)
    if args.command == "init":
        from .identity import Identity, IdentityError

        try:
            args.home.mkdir(parents=True, exist_ok=True)
            ident = Identity.create(args.home, args.name)
        except (IdentityError, OSError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        print(f"created peer {ident.name!r} in {args.home}\n  public key {ident.public_key_hex}\n"
              f"  peer id    {ident.peer_id}")
        return 0
    if args.command == "run":
        from . import log
        from .daemon import run
        from .identity import IdentityError

        log.setup(name=args.home.name, as_json=args.log_json)
        try:
            run(args.home, grpc_bind=args.grpc, p2p_listen=args.p2p, bootstrap=args.bootstrap,
                sync_interval=args.sync_interval)
        except (IdentityError, OSError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        return 0
    try:
        return _admin(args)
    except grpc.RpcError as exc:
        print(f"fiun-peer: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2


def _admin(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from .rpc.channel import insecure_channel
    from .rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc

    stub = admin_pb2_grpc.AdminServiceStub(insecure_channel(args.target))
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
