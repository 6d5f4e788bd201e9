"""Benchmarks and experiments: micro-benchmarks (``bench_*``), experiments (``exp_*``), the admin
load test and the generators of BENCHMARKS.md and RESULTS.md. Not part of the product: every
script runs from the repository root as ``.venv/bin/python bench/NAME.py`` or
``.venv/bin/python -m bench.NAME`` and imports its siblings as ``bench.NAME``."""

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """An argparse type for comma-separated integers (``--sizes 8,16``), refused in plain words."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values
