"""`fiun-peer`: create an identity, run the daemon, and talk to a running daemon's admin API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .home import HOME_ENV, home_from_env, home_path

if TYPE_CHECKING:
    from .identity import Identity
    from .rpc.admin_client import AdminClient

DESCRIPTION = """\
A fiun-peer daemon owns models in a decentralized machine-unlearning network. Peers gossip signed
lineage records (which model inherits from which) over libp2p; when labels must be forgotten, the
discovery peers announce an unlearning Fisher, and every affected peer pulls the Fishers it needs over
gRPC, merges them (Eq. 5) and dampens its own last layer (Eq. 6). No coordinator.

  fiun-peer init  --home HOME --name NAME          create the peer's Ed25519 key and admin token (0600)
  fiun-peer run   --home HOME [--config FILE] [--grpc H:P] [--p2p MULTIADDR] [--bootstrap ADDR ...]
                  [--metrics H:P]   every option also FIUN_<OPTION> and a key in HOME/config.toml
  fiun-peer admin status | lineage | publish ... | export ... | unlearn ... [--home HOME | --target H:P --token-file F]
  fiun-peer health [--home HOME | --target H:P]    exit 0 when the daemon reports SERVING

HOME is a directory, or a bare NAME for ~/.fiun/NAME (so keys stay out of your working tree); every
command that takes --home defaults to $FIUN_HOME. One daemon per home: a second `run` exits with
"HOME is in use by pid N".
"""

#: fiun_peer.formats.FORMATS and bounds, repeated here so that the admin commands need not import torch
#: (tests/test_formats.py checks they agree).
MODEL_FORMATS = ("zoo", "torch-export", "torchvision", "hf")
MAX_ARTIFACT_BYTES = 384 << 20
BOUNDS_TEXT = ("artifacts up to 384 MiB and 134,217,728 parameters; per sample at most 1,048,576 input numbers (or "
               "8,192 tokens) and 16,777,216 numbers in any layer output; at most 1,000,000 samples")
PUBLISH_HELP = """\
Register a model version owned by this peer: its artifact, your own training data (it never leaves
this peer) and its parents. Formats (--format):

  zoo           our own mlp/cnn/resnet: --model weights.safetensors --arch '{"model":"mlp","in_shape":[1,8,8],"num_classes":10}'
  torchvision   a torchvision classification model: --model weights.safetensors --arch '{"name":"resnet18","num_classes":10}'
  hf            a transformers image or sequence classifier: --model FOLDER (config.json, model.safetensors)
  torch-export  any nn.Module as a torch.export program: --model model.pt2 (exported in eval mode, with a
                dynamic batch dimension)

""" + textwrap.fill(
    "Nothing from the artifact is run: no pickle, no remote code, a .pt2 with plain tensors and ATen operators "
    "only. The head is the final Linear layer that produces the logits (or --head NAME); anything else is "
    f"refused with the reason. Bounds, formats other than zoo: {BOUNDS_TEXT}. Zoo models: 262,144 input and "
    "262,144 layer-output numbers per sample, 67,108,864 parameters.", 104) + "\n"

HOME_HELP = ("the peer's home: a directory, or a bare NAME for ~/.fiun/NAME (default: $FIUN_HOME)")


class RunHelpFormatter(argparse.HelpFormatter):
    """`run --help` names each option's default and its FIUN_<OPTION> variable (see fiun_peer.config)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.dest in ("help", "config") or action.help == argparse.SUPPRESS:
            return text
        default = action.default
        shown = ("off" if default is False else "none" if default in (None, [], "") else str(default))
        if action.dest == "home":
            shown = "none"
        env = f"FIUN_{action.dest.upper()}"
        if "default" in text:  # the help already says what the default means
            return f"{text} (env {env})"
        return f"{text} (default: {shown.replace('%', '%%')}; env {env})"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fiun-peer")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"



def _labels(text: str) -> list[int]:
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 2,9; got {text!r}") from None
    if any(c < 0 for c in out):
        raise argparse.ArgumentTypeError("labels must be non-negative")
    return out


def _parent(text: str) -> tuple[str, str, str, int]:
    """MODEL[:RELATION][@VERSION]: (model, relation, digest, version number); VERSION is the parent
    version's sha256 digest or vN (N >= 1), absent for the parent's current version."""
    head, at, which = text.partition("@")
    mid, _, rel = head.partition(":")
    if not mid or (at and not which):
        raise argparse.ArgumentTypeError(f"parent must be MODEL[:RELATION][@DIGEST|@vN], got {text!r}")
    digest, version = "", 0
    if which:
        if re.fullmatch(r"v[1-9][0-9]{0,8}", which):
            version = int(which[1:])
        elif re.fullmatch(r"[0-9a-f]{64}", which):
            digest = which
        else:
            raise argparse.ArgumentTypeError(f"parent version must be a 64-hex sha256 digest or vN (N >= 1), "
                                             f"got {which!r} in {text!r}")
    return mid, rel or "finetune", digest, version


#: What the admin options mean when given nowhere (they are SUPPRESSed in the parsers, see build_parser).
ADMIN_DEFAULTS: dict[str, Any] = {"target": None, "home": None, "token_file": None, "tls_ca": None,
                                  "tls_cert": None, "tls_key": None, "json": False, "timeout": 60.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiun-peer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fiun-peer {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_init(sub)
    _add_run(sub)
    _add_health(sub)
    _add_admin(sub)
    return p


def _add_init(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("init", help="create a peer home: Ed25519 identity key (mode 0600)")
    i.add_argument("--home", type=home_path, metavar="HOME", help=HOME_HELP)
    i.add_argument("--name", required=True, help="a human-readable peer name")
    i.add_argument("--identity-key", type=Path, metavar="FILE",
                   help="use this 32-byte Ed25519 seed (e.g. a mounted Secret) instead of a new random key; "
                        "it is copied into HOME/identity.key (0600)")
    i.add_argument("--admin-token", type=Path, metavar="FILE",
                   help="use the token in this file (e.g. a mounted Secret) as HOME/admin.token (0600)")



def _add_run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the daemon (gossip, gRPC services, unlearning agent)",
                       formatter_class=RunHelpFormatter,
                       description="Run the daemon. Every option is also an environment variable FIUN_<OPTION> "
                                   "and a key in the TOML config file; precedence: flags > environment > "
                                   "file > defaults.")
    r.add_argument("--home", required=True, type=home_path, metavar="HOME",
                   help="the peer's home: a directory, or a bare NAME for ~/.fiun/NAME")
    r.add_argument("--grpc", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="gRPC bind address of the peer services (record sync and push, Fisher pull, health) that "
                        "other peers call (port 0: pick one; see HOME/run.json)")
    r.add_argument("--admin", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="the admin API's own gRPC listener (publish, unlearn, export...), loopback by default so "
                        "that exposing --grpc does not expose it; `fiun-peer admin --home HOME` finds it in "
                        "HOME/run.json. A non-loopback address needs --tls-cert/--tls-key, or --insecure")
    r.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --admin address without TLS (plaintext, token in the clear)")
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
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines shown (debug adds every retry and dial)")
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



def _add_health(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("health", help="ask a daemon's gRPC health service; exit 0 when SERVING")
    h.add_argument("--target", metavar="HOST:PORT",
                   help="the daemon's gRPC address (default: from --home's run.json, on loopback for a "
                        "wildcard bind; else 127.0.0.1:50051)")
    h.add_argument("--home", type=home_path, metavar="HOME", help=HOME_HELP)
    h.add_argument("--service", default="", help='service name ("" = the whole daemon)')
    h.add_argument("--timeout", type=float, default=5.0)
    h.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="the daemon serves TLS: verify it against this CA (default with --home: its --tls-ca)")



def _add_admin(sub: argparse._SubParsersAction) -> None:
    # The admin options are accepted before and after the action (`admin --home A status` and
    # `admin status --home A`): every parser gets them with SUPPRESS defaults, so a value given in
    # one place is not overwritten by the other's default; peer_main fills in ADMIN_DEFAULTS.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--target", metavar="HOST:PORT", default=argparse.SUPPRESS,
                        help="the daemon's admin address (`run --admin`; default: from --home's run.json)")
    shared.add_argument("--home", type=home_path, metavar="HOME", default=argparse.SUPPRESS,
                        help="the peer's home (a directory, or a bare NAME for ~/.fiun/NAME; default "
                             "$FIUN_HOME): its admin.token is the credential, run.json the default --target")
    shared.add_argument("--token-file", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="file holding the admin token (mode 0600); else --home's admin.token, else "
                             "$FIUN_ADMIN_TOKEN, else $FIUN_HOME's admin.token")
    shared.add_argument("--tls-ca", type=Path, metavar="PEM", default=argparse.SUPPRESS,
                        help="the daemon serves TLS: verify it against this CA")
    shared.add_argument("--tls-cert", type=Path, metavar="PEM", default=argparse.SUPPRESS,
                        help="mTLS: present this client certificate")
    shared.add_argument("--tls-key", type=Path, metavar="PEM", default=argparse.SUPPRESS,
                        help="mTLS: the private key of --tls-cert (mode 0600)")
    shared.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print replies as JSON")
    shared.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"per-call deadline in seconds (default {ADMIN_DEFAULTS['timeout']:g})")
    a = sub.add_parser("admin", help="call a running daemon's admin API", parents=[shared])
    asub = a.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return asub.add_parser(name, help=help, parents=[shared])

    action("status", "peer identity, addresses, record count, counters")
    action("lineage", "the lineage graph this peer knows")
    _add_publish(asub, shared)
    ex = action("export", "write the weights of a model version this peer owns to a file")
    ex.add_argument("--model-id", required=True)
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=0, help="the version number (default: the current version)")
    which.add_argument("--digest", default="", help="the version's sha256 digest")
    ex.add_argument("--out", required=True, type=Path,
                    help="where to write the artifact (mode 0600): a safetensors or .pt2 file, or for an hf model a "
                         "folder with config.json and model.safetensors")
    un = action("unlearn", "submit an unlearning request")
    un.add_argument("--labels", required=True, type=_labels, help="labels to forget, e.g. 2,9")
    un.add_argument("--id", default="", help="request id (default: generated); requests are idempotent by id")
    un.add_argument("--settings", default="", help='FIUn settings JSON, e.g. {"gamma": 3.0}')
    un.add_argument("--force", action="store_true",
                    help="accept labels that no model of the lineage holds yet (for models that join later); "
                         "without it such a request is refused and nothing is signed")
    rq = action("request", "progress of a request: affected models, receipts, why pending")
    rq.add_argument("request_id")
    rq.add_argument("--wait", action="store_true", help="poll until every affected model has a receipt")
    rq.add_argument("--wait-timeout", type=float, default=300.0)
    rc = action("receipts", "receipts this peer has seen")
    rc.add_argument("--request", default="")


def _add_publish(asub: argparse._SubParsersAction, shared: argparse.ArgumentParser) -> None:
    pub = asub.add_parser("publish", help="register a model version owned by this peer", parents=[shared],
                          description=PUBLISH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pub.add_argument("--model-id", required=True)
    pub.add_argument("--format", choices=MODEL_FORMATS, default="zoo",
                     help="the artifact's format (default zoo: our own mlp/cnn/resnet)")
    art = pub.add_mutually_exclusive_group(required=True)
    art.add_argument("--model", type=Path, metavar="PATH",
                     help="the artifact: a .pt2 file (torch-export), a safetensors file (zoo, torchvision), or a "
                          "folder with config.json and model.safetensors (hf)")
    art.add_argument("--weights", type=Path, metavar="PATH", help="the same as --model (a safetensors state dict)")
    pub.add_argument("--head", default="", metavar="NAME",
                     help="the head's module name, e.g. fc or classifier (default: the final Linear layer that "
                          "produces the logits)")
    pub.add_argument("--data", required=True, type=Path,
                     help='safetensors with your own data: "x" and "y", or "input_ids" (+ "attention_mask") and '
                          '"labels" for a text model')
    pub.add_argument("--arch",
                     help='architecture JSON or a file holding it: zoo {"model":"mlp","in_shape":[1,8,8],'
                          '"num_classes":10}; torchvision {"name":"resnet18","num_classes":10}; hf: the config.json '
                          "(default: the one in --model's folder); torch-export: none")
    pub.add_argument("--parents", nargs="*", type=_parent, default=[], metavar="MODEL[:RELATION][@VERSION]",
                     help="parent models with relation aggregate|finetune|incremental|distill|transfer "
                          "(default finetune) and the parent version this model derived from: @DIGEST (the "
                          "sha256 of that version's weights, as `export` prints it) or @vN; default the "
                          "parent's current version. Requests that version had already applied do not "
                          "concern this model through it, e.g. --parents b:finetune@v2")
    pub.add_argument("--labels", type=_labels, default=[], help="own label set (default: labels in --data)")
    pub.add_argument("--wait-parents", type=float, nargs="?", const=60.0, default=0.0, metavar="SECONDS",
                     help="while a parent's lineage has not reached this peer yet (FAILED_PRECONDITION), retry "
                          "for up to SECONDS (60 when given alone; default: fail at once)")


def peer_main(argv: list[str] | None = None) -> int:
    try:
        rc = _main(argv)
        sys.stdout.flush()  # so that a reader gone away (`| head -1`) shows up here, not at exit
        return rc
    except BrokenPipeError:
        # The standard quiet exit when the reader closed the pipe (Python docs, "Note on SIGPIPE"):
        # point stdout at /dev/null so the interpreter's final flush cannot fail again, and exit
        # with the status a process killed by SIGPIPE would have.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    resolved = None
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):  # help: the parser with real defaults
        from .config import ConfigError, resolve_run

        try:
            resolved = resolve_run(build_parser, argv)
        except ConfigError as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        args = resolved.args
    else:
        args = build_parser().parse_args(argv)
    if args.command == "admin":
        for name, default in ADMIN_DEFAULTS.items():
            if not hasattr(args, name):
                setattr(args, name, default)
    # --home, else $FIUN_HOME, for every command (`run` gets it through fiun_peer.config's layers).
    args.home_from_env = False
    if args.command != "run" and args.home is None and home_from_env() is not None:
        args.home, args.home_from_env = home_from_env(), True
    if args.command == "health":
        return _health(args)
    if args.command == "init":
        from .home import HomeError
        from .identity import Identity, IdentityError
        from .rpc.auth import TOKEN_FILE, AuthError, create_token

        if args.home is None:
            print(f"fiun-peer: error: give --home HOME (a directory, or a bare NAME for ~/.fiun/NAME) or set "
                  f"{HOME_ENV}", file=sys.stderr)
            return 2
        try:
            args.home.mkdir(parents=True, exist_ok=True)
            if args.identity_key is not None:
                ident = _import_identity(args.home, args.name, args.identity_key)
            else:
                ident = Identity.create(args.home, args.name)
            if args.admin_token is not None:
                _import_token(args.home, args.admin_token)
            else:
                create_token(args.home)
            _write_config_template(args.home)
        except (IdentityError, AuthError, HomeError, OSError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        print(f"created peer {ident.name!r} in {args.home}\n  public key {ident.public_key_hex}\n"
              f"  peer id    {ident.peer_id}\n  admin token {args.home / TOKEN_FILE}")
        return 0
    if args.command == "run":
        from .home import HomeError, HomeLock

        try:  # before torch and libp2p load: a second daemon on this home fails at once
            lock = HomeLock.acquire(args.home)
        except (HomeError, OSError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        from . import log
        from .daemon import run
        from .gossip import GossipError
        from .identity import IdentityError
        from .policy import PolicyError
        from .rpc.auth import AuthError

        log.setup(name=args.home.name, as_json=args.log_json, level=getattr(logging, args.log_level.upper()))
        try:
            logging.getLogger("fiun_peer.config").info(
                "configuration", extra={"event": "config", "file": str(resolved.config_file or ""),
                                        "sources": ",".join(f"{k}={v}" for k, v in resolved.sources.items()
                                                            if v != "default")})
            run(args.home, home_lock=lock, grpc_bind=args.grpc, admin_bind=args.admin, insecure=args.insecure,
                p2p_listen=args.p2p, bootstrap=args.bootstrap,
                metrics=args.metrics, advertise_grpc=args.advertise_grpc, advertise_p2p=args.advertise_p2p,
                effective_config=resolved.effective(),
                sync_interval=args.sync_interval, requesters=args.requester, admin_cns=args.admin_cn,
                tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, tls_ca=args.tls_ca,
                allow_peers=args.allow_peers)
        except (IdentityError, AuthError, PolicyError, GossipError, OSError, ValueError) as exc:
            print(f"fiun-peer: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        finally:
            lock.release()
        return 0
    from .rpc.admin_client import RpcFailure
    from .rpc.auth import AuthError

    try:
        return _admin(args)
    except AuthError as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2
    except RpcFailure as exc:
        print(f"fiun-peer: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away: peer_main exits quietly
        raise
    except (OSError, ValueError) as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2


def _read_artifact(fmt: str, path: Path, arch: str | None) -> tuple[bytes, str]:
    """(artifact bytes, architecture JSON) for `admin publish`: a file, or an hf model's folder."""
    if arch and not arch.lstrip().startswith("{"):
        arch = Path(arch).read_text()
    if path.is_dir():
        if fmt != "hf":
            raise ValueError(f"--model {path} is a folder; only --format hf takes one (config.json, model.safetensors)")
        weights = path / "model.safetensors"
        if not weights.is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8])
            raise ValueError(f"{path} has no model.safetensors (found: {found or 'nothing'}); save the model with "
                             "save_pretrained(..., safe_serialization=True): pickled .bin weights are not accepted")
        if not arch:
            arch = (path / "config.json").read_text()
        path = weights
    if fmt in ("zoo", "torchvision") and not arch:
        raise ValueError(f"--format {fmt} needs --arch (see --help)")
    size = path.stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise ValueError(f"{path} has {size:,} bytes; a peer accepts artifacts up to {MAX_ARTIFACT_BYTES:,}")
    return path.read_bytes(), arch or ""


def _import_identity(home: Path, name: str, key_file: Path) -> Identity:
    """``init --identity-key``: the seed in ``key_file`` (raw 32 bytes, as in HOME/identity.key) becomes
    this home's key. The source may be group-readable (kubelet mounts Secrets so under fsGroup); the
    copy in the home is 0600 like any key."""
    from .identity import SEED_BYTES, Identity, IdentityError

    seed = Path(key_file).read_bytes()
    if len(seed) != SEED_BYTES:
        raise IdentityError(f"{key_file} holds {len(seed)} bytes; an identity key is a raw {SEED_BYTES}-byte "
                            f"Ed25519 seed (e.g. another home's identity.key)")
    return Identity.create(home, name, seed=seed)


def _import_token(home: Path, token_file: Path) -> None:
    """``init --admin-token``: the token in ``token_file`` becomes HOME/admin.token (born 0600)."""
    from .home import write_new_secret
    from .rpc.auth import TOKEN_FILE, AuthError

    token = Path(token_file).read_text(encoding="utf-8", errors="replace").strip()
    if not token or any(c.isspace() for c in token):
        raise AuthError(f"{token_file} must hold one admin token (no spaces), got {len(token)} characters")
    write_new_secret(home / TOKEN_FILE, (token + "\n").encode(), what="admin token")


def _write_config_template(home: Path) -> None:
    """A commented HOME/config.toml listing every `run` option at its default (kept if present)."""
    from .config import CONFIG_FILE, commented_template, run_subparser

    path = home / CONFIG_FILE
    if not path.exists():
        path.write_text(commented_template(run_subparser(build_parser())), encoding="utf-8")


def _health(args: argparse.Namespace) -> int:
    from .rpc.admin_client import RpcFailure, check_health

    try:
        target, ca = _health_target(args)
    except ValueError as exc:
        print(f"fiun-peer: error: {exc}", file=sys.stderr)
        return 2
    args.target = target
    tls = None
    if ca:
        from .rpc.auth import ClientTLS

        tls = ClientTLS.from_files(ca, None, None)
    try:
        status, serving = check_health(args.target, service=args.service, tls=tls, timeout=args.timeout)
    except RpcFailure as exc:
        print(f"fiun-peer: {args.target}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(f"{args.target} {args.service or '(daemon)'}: {status}")
    return 0 if serving else 1


def _health_target(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The address and CA to probe: --target, else the port in HOME/run.json (so a container's
    HEALTHCHECK follows the configured port), on loopback when the daemon bound a wildcard; over TLS
    (to the advertised name, which its certificate carries) when the daemon serves TLS."""
    ca = args.tls_ca
    if args.target:
        return args.target, ca
    if args.home is None:
        return "127.0.0.1:50051", ca
    info = _read_run_file(args.home)
    config = info.get("config") or {}
    advertised = info["grpc"]
    port = advertised.rsplit(":", 1)[1]
    if config.get("tls_cert"):
        ca = ca or (Path(config["tls_ca"]) if config.get("tls_ca") else None)
        if ca is None:
            raise ValueError("the daemon serves TLS (--tls-cert): give --tls-ca PEM to verify it")
        return advertised, ca
    host = str(config.get("grpc", "")).rsplit(":", 1)[0].strip("[]")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}", ca


def _read_run_file(home: Path) -> dict:
    from .home import RUN_FILE

    run_file = home / RUN_FILE
    try:
        info = json.loads(run_file.read_text())
        info["grpc"]  # noqa: B018 -- the one field every caller needs
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the peer's address from {run_file} (is it running?): {exc}") from None
    return info


def status_text(s: Any) -> str:
    """`admin status` for people: one fact per line, counters as an aligned table."""
    counters = sorted(dict(s.counters).items())
    width = max((len(k) for k, _ in counters), default=0)
    lines = [f"peer {s.name}  {s.peer_id}", f"  grpc             {s.grpc_address}",
             f"  admin            {s.admin_address or '-'}",
             f"  p2p              {' '.join(s.p2p_addresses) or '-'}",
             f"  connected peers  {s.connected_peers}" + (
                 "  (warning: not connected to any peer; a lone peer is fine, else check --bootstrap "
                 "and the daemon's log)" if s.connected_peers == 0 else ""),
             f"  records          {s.records}",
             f"  models           {', '.join(s.models) or '-'}",
             "  counters" + ("" if counters else "         (none yet)")]
    lines += [f"    {k:<{width}}  {v}" for k, v in counters]
    return "\n".join(lines)


def _admin_client(args: argparse.Namespace) -> AdminClient:
    """The client `admin` talks through: --target or HOME/run.json's address, the token, TLS."""
    from .rpc.admin_client import AdminClient
    from .rpc.auth import TOKEN_ENV, ClientTLS, resolve_token

    target = args.target
    if not target:
        if args.home is None:
            raise ValueError(f"give --home HOME (a running peer's home) or --target HOST:PORT, or set {HOME_ENV}")
        info = _read_run_file(args.home)
        target = info.get("admin") or info["grpc"]  # a run.json from before the admin listener: one port
    # An explicit $FIUN_ADMIN_TOKEN beats the home that only $FIUN_HOME named; --home beats both.
    token_home = None if args.home_from_env and os.environ.get(TOKEN_ENV, "").strip() else args.home
    token = resolve_token(token_file=args.token_file, home=token_home)
    tls = ClientTLS.from_files(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    if tls is None and (args.tls_cert or args.tls_key):
        raise ValueError("--tls-cert/--tls-key need --tls-ca (the CA that signed the daemon's certificate)")
    return AdminClient(target, token=token, tls=tls, timeout=args.timeout)


def _admin(args: argparse.Namespace) -> int:
    from .rpc.admin_client import as_dict

    client = _admin_client(args)

    def show(reply: Any, text: str) -> None:
        print(json.dumps(as_dict(reply), indent=2) if args.json else text)

    if args.action == "status":
        s = client.status()
        show(s, status_text(s))
    elif args.action == "lineage":
        r = client.list_lineage()
        rows = [f"{m.model_id:<12} v{m.version} {m.model_digest[:12]}  labels {list(m.labels)}  parents "
                f"{', '.join(f'{p.model_id}@v{p.version}({p.relation})' for p in m.parents) or '-'}  "
                f"owner {m.owner[:12]}" for m in r.models]
        show(r, "\n".join(rows) or "(no models yet)")
    elif args.action == "publish":
        _publish(client, args, show)
    elif args.action == "export":
        _export(client, args, show)
    elif args.action == "unlearn":
        r = client.request_unlearning(args.labels, settings_json=args.settings, request_id=args.id, force=args.force)
        show(r, f"request {r.request_id}\n  discovery models {', '.join(r.discovery_models) or '-'}\n"
                f"  affected models  {', '.join(r.affected_models) or '-'}")
    elif args.action == "request":
        return _show_request(client, args, show)
    elif args.action == "receipts":
        r = client.list_receipts(args.request)
        show(r, "\n".join(f"{x.request_id} {x.model_id}: {x.old_digest[:12]} -> {x.new_digest[:12]}"
                          if x.state != "not_affected" else f"{x.request_id} {x.model_id}: not affected ({x.reason})"
                          for x in r.receipts) or "(no receipts)")
    return 0


def _publish(client: AdminClient, args: argparse.Namespace, show: Callable[[Any, str], None]) -> None:
    from .rpc.admin_client import ParentSpec

    artifact, arch = _read_artifact(args.format, args.model or args.weights, args.arch)

    def waiting(reason: str) -> None:  # ``publish --wait-parents``: say once why it waits
        print(f"fiun-peer: waiting for the parents' lineage (up to {args.wait_parents:g}s): {reason}",
              file=sys.stderr, flush=True)

    r = client.publish(args.model_id, artifact, args.data.read_bytes(),
                       parents=[ParentSpec(m, rel, d, v) for m, rel, d, v in args.parents], labels=args.labels,
                       architecture_json=arch, format=args.format, head=args.head,
                       wait_parents=args.wait_parents, on_wait=waiting)
    named = {m: bool(d or v) for m, _, d, v in args.parents}
    lines = [f"published {r.model_id} {r.model_digest}", f"  record {r.record_id}"]
    lines += [f"  parent {p.model_id} v{p.version} {p.digest[:12]} ({p.relation}"
              f"{'' if named.get(p.model_id) else '; its current version here: name another with @DIGEST or @vN'})"
              for p in r.parents]
    show(r, "\n".join(lines))


def _export(client: AdminClient, args: argparse.Namespace, show: Callable[[Any, str], None]) -> None:
    from .files import write_atomic

    if args.version < 0:
        raise ValueError("--version must be >= 1 (or leave it out for the current version)")
    r = client.export_model(args.model_id, digest=args.digest, version=args.version)
    if r.format == "hf":  # a folder as save_pretrained writes it, ready for from_pretrained
        args.out.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(args.out / "config.json", (r.architecture_json + "\n").encode())
        write_atomic(args.out / "model.safetensors", r.weights)
    else:
        write_atomic(args.out, r.weights)  # 0600: the weights are the owner's
    r_meta = type(r)(model_id=r.model_id, model_digest=r.model_digest, version=r.version, format=r.format)
    show(r_meta, f"exported {r.model_id} v{r.version} {r.model_digest}\n  to {args.out} ({len(r.weights)} bytes"
                 f"{', ' + r.format if r.format not in ('', 'zoo') else ''})")


def _show_request(client: AdminClient, args: argparse.Namespace, show: Callable[[Any, str], None]) -> int:
    deadline = time.monotonic() + args.wait_timeout
    last = ""
    for r in client.watch(args.request_id):
        applied = sum(m.state == "applied" for m in r.models)
        spared = sum(m.state == "not_affected" for m in r.models)
        lines = [f"request {r.request_id}: forget {list(r.forget_labels)} - "
                 f"{applied}/{len(r.models)} models applied{f', {spared} not affected' if spared else ''}"
                 f"{' - done' if r.done else ''}"]
        for m in r.models:
            role = "discovery" if m.discovery else "inherited"
            detail = (f"{m.old_digest[:12]} -> {m.new_digest[:12]}" if m.state == "applied" else
                      m.reason if m.state == "not_affected" else m.why_pending)
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
    raise AssertionError("watch() never ends")


if __name__ == "__main__":
    sys.exit(peer_main())
