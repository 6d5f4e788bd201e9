"""Benchmarks and experiments: micro-benchmarks (``bench_*``), experiments (``exp_*``), the admin
load test and the generators of BENCHMARKS.md and RESULTS.md. Not part of the product: every
script runs from the repository root as ``.venv/bin/python bench/NAME.py`` or
``.venv/bin/python -m bench.NAME`` and imports its siblings as ``bench.NAME``."""
