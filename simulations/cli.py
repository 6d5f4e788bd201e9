"""`fiun-sim`: run the paper's experiments. `centralized` runs Algorithm 1 in one process."""

from __future__ import annotations

import argparse
import sys

from fiun_peer.core.fisher import ESTIMATORS
from fiun_peer.core.fiun import NORMALIZATIONS, FIUnSettings
from fiun_peer.data import DATASETS
from fiun_peer.models import MODELS

from .topology import FRAMEWORKS


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
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default digits (real, offline)")
    p.add_argument("--data-dir", help="folder with cifar-100-python/ files for --dataset cifar100")
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--forget", type=parse_labels, default=(2,), metavar="LABELS",
                   help="labels to unlearn, comma-separated, e.g. 2,9 (default 2)")
    p.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator,
                   help=f"Fisher estimator (default {d.estimator}; the paper's code uses batch)")
    p.add_argument("--tau", type=float, default=d.tau, help=f"Eq. 6 dampening constant (default {d.tau})")
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"Eq. 6 selection threshold (default {d.gamma})")
    p.add_argument("--eta", type=float, default=d.eta, help=f"Eq. 6 cap on the scale factor (default {d.eta})")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=d.normalize,
                   help=f"rescale each Fisher by its mean before Eq. 6 (default {d.normalize}; none = paper)")
    p.add_argument("--per-label", dest="per_label", action=argparse.BooleanOptionalAction, default=d.per_label,
                   help="one unlearning Fisher per forgotten label, merged with Eq. 5 (default on)")
    p.add_argument("--paper", action="store_true",
                   help="paper-exact FIUn: batch estimator, raw Fishers, one Fisher per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the machine-readable result here")
    p.add_argument("--no-baselines", action="store_true", help="skip fine-tune / gradient ascent / distill")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(a: argparse.Namespace) -> FIUnSettings:
    if a.paper:
        base = FIUnSettings.paper()
        return FIUnSettings(estimator=base.estimator, tau=a.tau, gamma=a.gamma, eta=a.eta,
                            normalize=base.normalize, per_label=base.per_label)
    return FIUnSettings(estimator=a.estimator, tau=a.tau, gamma=a.gamma, eta=a.eta, normalize=a.normalize,
                        per_label=a.per_label)


def config_from_args(a: argparse.Namespace):
    from .centralized import SimConfig

    return SimConfig(framework=None if a.topology else a.framework, topology_file=a.topology,
                     dataset=a.dataset, data_dir=a.data_dir, model=a.model, forget=a.forget, seed=a.seed,
                     settings=settings_from_args(a), baselines=not a.no_baselines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiun-sim", description="Run FIUn experiments (Liu et al., Fisher "
                                "Inheritance Unlearning) on an inheritance graph of models.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("centralized", help="train a topology, run Algorithm 1 in one process, compare with "
                       "re-training and the baselines, print the paper-style table")
    add_experiment_args(c)
    e = sub.add_parser("export", help="train a topology and write each model's weights and own data as "
                       "safetensors files, ready for `fiun-peer admin publish`")
    add_experiment_args(e)
    e.add_argument("--out", required=True, help="output folder (one sub-folder per model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
        if args.command == "export":
            from .export import export_stage

            for line in export_stage(cfg, args.out):
                print(line)
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"fiun-sim: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
