"""`fiun-sim`: run the paper's experiments. `centralized` runs Algorithm 1 in one process; `network`
runs it on real peer processes and compares the two bit for bit."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from fiun_peer.core.fisher import ESTIMATORS
from fiun_peer.core.fiun import NORMALIZATIONS, ROWS, FIUnSettings
from fiun_peer.models import MODELS
from simulations.data import DATASETS

from .byom import EXAMPLES, check_name, default_dataset
from .topology import FRAMEWORKS


def _model_name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_in_format(model: str, fmt: str) -> str:
    """`fiun-sim export --model M --format F`: the model name that trains M and publishes it as F."""
    base = model.split(":", 1)[1] if ":" in model else model
    if fmt == "zoo" and model in MODELS:
        return model
    if fmt == "torch-export" and not model.startswith("hf-"):
        return check_name(f"torch-export:{base}")
    if fmt == "torchvision" and base not in MODELS and base != "bn-cnn" and not model.startswith("hf-"):
        return check_name(f"torchvision:{base}")
    if fmt == "hf" and model.startswith("hf-"):
        return model
    raise ValueError(f"--model {model} cannot be written as --format {fmt} (zoo: mlp, cnn, resnet; torchvision: a "
                     "torchvision classification model; hf: hf-vit-tiny, hf-bert-tiny; torch-export: any but hf-*)")


def parse_labels(text: str) -> tuple[int, ...]:
    try:
        labels = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--forget expects comma-separated integers, e.g. 2,9; got {text!r}") from None
    if not labels or min(labels) < 0:
        raise argparse.ArgumentTypeError("--forget needs at least one non-negative label")
    return labels


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `centralized` and `network`."""
    d = FIUnSettings()
    topo = p.add_mutually_exclusive_group()
    topo.add_argument("--framework", choices=FRAMEWORKS, default="fl",
                      help="built-in topology (paper Fig. 6): fl, ddpl, il, tl (default fl)")
    topo.add_argument("--topology", metavar="FILE", help="any DAG from a JSON file (see README)")
    topo.add_argument("--random-lineage", type=int, metavar="SEED",
                      help="a seeded random lineage: 1-3 roots on every label, narrow descendants (2-5 labels) "
                           "by every relation, multi-root and imbalanced paths, depth up to 8")
    p.add_argument("--nodes", type=int, metavar="N",
                   help="with --random-lineage: the number of models, 6-16 (default: drawn from the seed)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="default digits (real, offline) for the zoo models; digits32 (3x32x32 colour digits) for "
                        "torchvision models, tokens (a generated text task) for hf-bert-tiny")
    p.add_argument("--data-dir", help="folder with cifar-100-python/ files for --dataset cifar100")
    p.add_argument("--model", type=_model_name, default="mlp", metavar="MODEL",
                   help=f"a zoo model ({', '.join(MODELS)}; default mlp) or a model in its own format, published "
                        f"as its owner would: {', '.join(EXAMPLES)} (torchvision:NAME takes any torchvision "
                        "classification model)")
    p.add_argument("--forget", type=parse_labels, default=(2,), metavar="LABELS",
                   help="labels to unlearn, comma-separated, e.g. 2,9 (default 2)")
    p.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator,
                   help=f"Fisher estimator (default {d.estimator}; the paper's code uses batch)")
    pa = FIUnSettings.paper()
    p.add_argument("--tau", type=float, help=f"Eq. 6 dampening constant (default {d.tau}; --paper {pa.tau})")
    p.add_argument("--gamma", type=float,
                   help=f"Eq. 6 selection threshold (default {d.gamma}; --paper {pa.gamma})")
    p.add_argument("--eta", type=float, help=f"Eq. 6 cap on the scale factor (default {d.eta}; --paper {pa.eta})")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=d.normalize,
                   help=f"rescale each Fisher by its mean before Eq. 6 (default {d.normalize}; none = paper)")
    p.add_argument("--per-label", dest="per_label", action=argparse.BooleanOptionalAction, default=d.per_label,
                   help="one unlearning Fisher per forgotten label, merged with Eq. 5 (default on)")
    p.add_argument("--rows", choices=ROWS, default=None,
                   help=f"which head rows Eq. 6 may select: forget = only the forgotten classes' rows, all = the "
                        f"whole head (default {d.rows}; --paper {pa.rows})")
    p.add_argument("--paper", action="store_true",
                   help="paper-exact FIUn: batch estimator, raw Fishers, one Fisher per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the machine-readable result here")
    p.add_argument("--no-baselines", action="store_true", help="skip fine-tune / gradient ascent / distill")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(a: argparse.Namespace) -> FIUnSettings:
    """--paper gives FIUnSettings.paper() (tau, gamma, eta still overridable); otherwise the defaults
    with the options given."""
    if a.paper:
        base = FIUnSettings.paper()
    else:
        base = replace(FIUnSettings(), estimator=a.estimator, normalize=a.normalize, per_label=a.per_label)
    given = {k: getattr(a, k) for k in ("tau", "gamma", "eta", "rows") if getattr(a, k) is not None}
    return replace(base, **given)


def config_from_args(a: argparse.Namespace):
    from .centralized import SimConfig

    if a.nodes is not None and a.random_lineage is None:
        raise ValueError("--nodes needs --random-lineage")
    custom = a.topology is not None or a.random_lineage is not None
    return SimConfig(framework=None if custom else a.framework, topology_file=a.topology,
                     random_lineage=a.random_lineage, lineage_nodes=a.nodes, dataset=a.dataset or default_dataset(a.model), data_dir=a.data_dir, model=a.model, forget=a.forget, seed=a.seed,
                     settings=settings_from_args(a), baselines=not a.no_baselines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiun-sim", description="Run FIUn experiments (Liu et al., Fisher "
                                "Inheritance Unlearning) on an inheritance graph of models.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("centralized", help="train a topology, run Algorithm 1 in one process, compare with "
                       "re-training and the baselines, print the paper-style table")
    add_experiment_args(c)
    n = sub.add_parser("network", help="the same experiment on real fiun-peer processes on loopback: the "
                       "harness publishes the models, sends ONE request and only observes; the table adds "
                       "per-node peer times and a bit-for-bit comparison with the centralized run",
                       description=NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(n)
    n.add_argument("--peers", type=int, metavar="N",
                   help="number of peers (default: one per model). With fewer, the first N-1 models get a "
                        "peer each and the last peer owns the rest (fl --peers 6: five clients and a server "
                        "owning g, a, b)")
    n.add_argument("--peers-per-process", type=int, default=1, metavar="N",
                   help="run N peers in one OS process (default 1: every peer is its own `fiun-peer run`); "
                        "for large networks")
    n.add_argument("--keep-homes", metavar="DIR",
                   help="create the peers' homes (keys, stores, logs) in DIR, which must be new or empty, and "
                        "keep them; default: a temporary folder, removed afterwards")
    n.add_argument("--sync-interval", type=float, default=2.0, help="peers' anti-entropy interval, s (default 2)")
    n.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for every affected model's receipt (default 600)")
    e = sub.add_parser("export", help="train a topology and write each model's weights and own data as "
                       "safetensors files, ready for `fiun-peer admin publish`")
    add_experiment_args(e)
    e.add_argument("--out", required=True, help="output folder (one sub-folder per model)")
    e.add_argument("--format", choices=("zoo", "torch-export", "torchvision", "hf"), default=None,
                   help="write the models in this format (default: --model's own); e.g. --model cnn --format "
                        "torch-export writes .pt2 programs of the zoo's CNN, --model torchvision:resnet18 --format "
                        "torch-export of torchvision's ResNet-18")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export" and args.format:
            args.model = model_in_format(args.model, args.format)
        cfg = config_from_args(args)
        if args.command == "centralized":
            from .centralized import run_centralized
            from .report import format_table, write_json

            result = run_centralized(cfg, show_progress=not args.quiet)
            print(format_table(result))
            if args.json:
                write_json(result, args.json)
                print(f"\nwrote {args.json}")
            return 0
        if args.command == "network":
            return _network(args, cfg)
        if args.command == "export":
            from .export import export_stage

            for line in export_stage(cfg, args.out):
                print(line)
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"fiun-sim: error: {exc}", file=sys.stderr)
        return 2
    return 1


NETWORK_HELP = """\
Every model is owned by a real `fiun-peer` process on loopback. The harness trains the topology,
starts the peers, publishes each model through its owner's admin API, waits until every peer knows
the whole lineage, submits ONE unlearning request (with these FIUn settings) to the first peer, and
then only polls GetRequest: the peers locate, announce Fishers, pull, merge, dampen and sign
receipts. Then it exports each new version from its owner (AdminService.ExportModel with the
owner's admin token: peers cannot fetch weights) and compares it with Algorithm 1 run in-process
on the same inputs (torch.equal), and evaluates it on the same splits as `centralized`.

Output: the paper-style table with the network's FIUn columns, per-node received/applied times
(seconds after the request was sent) and equals_centralized; --json writes the `centralized` schema
plus those fields. Progress goes to stderr (one line on a terminal). Every peer process is stopped at
the end, also on failure, Ctrl-C or SIGTERM (exit 130/143); a peer that dies is reported with its
log tail (exit 1). The exit status is 1 as well when any node's weights differ from the centralized run.
"""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the peers are stopped."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _network(args: argparse.Namespace, cfg) -> int:
    import signal

    from fiun_peer.rpc.admin_client import RpcFailure

    from .harness import NetworkOptions, run_network
    from .progress import NetworkProgress
    from .report import format_table, write_json

    if args.peers_per_process < 1:
        raise ValueError("--peers-per-process must be >= 1")
    opts = NetworkOptions(peers=args.peers, peers_per_process=args.peers_per_process, homes=args.keep_homes,
                          sync_interval=args.sync_interval, timeout=args.timeout)
    progress = NetworkProgress(enabled=not args.quiet)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run_network(cfg, opts, progress)
    except KeyboardInterrupt as exc:
        progress.close()
        term = isinstance(exc, _Terminated)
        print(f"fiun-sim: {'terminated' if term else 'interrupted'}; every peer process was stopped",
              file=sys.stderr)
        return 143 if term else 130
    except (RuntimeError, TimeoutError) as exc:
        progress.close()
        print(f"fiun-sim: network run failed (every peer process was stopped): {exc}", file=sys.stderr)
        return 1
    except RpcFailure as exc:
        progress.close()
        print(f"fiun-sim: a peer's admin API failed (every peer process was stopped): {exc.code}: "
              f"{exc.message}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.close()
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0 if result["equals_centralized"] else 1


if __name__ == "__main__":
    sys.exit(main())
