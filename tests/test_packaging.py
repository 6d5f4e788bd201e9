"""Packaging (issue 17): the Apache-2.0 text pyproject declares is shipped verbatim; the daemon's
runtime dependencies hold only what the daemon imports (the simulations' extra `fiun-peer[sim]`
holds scikit-learn, matplotlib, tqdm; `dev` holds psutil; the model formats' extras `torchvision` and
`hf` are optional too); make installs the extras; every declared dependency is pinned in constraints.txt."""

from __future__ import annotations

import ast
import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SIM_ONLY = {"scikit-learn": "sklearn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
# md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, as shipped by many packages
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_license_is_the_verbatim_apache_2_text() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_MD5


def test_simulation_libraries_are_an_extra_not_daemon_dependencies() -> None:
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not runtime & set(SIM_ONLY)
    assert set(SIM_ONLY) <= {_name(r) for r in extras["sim"]}
    assert "psutil" in {_name(r) for r in extras["dev"]}
    installed = re.search(r"-e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert installed and {"dev", "sim", "torchvision", "hf"} <= set(installed.group(1).split(","))


def test_the_daemon_does_not_import_simulation_libraries_at_import_time() -> None:
    """Module-level imports only (the data sets, which load scikit-learn, live in simulations.data)."""
    banned = set(SIM_ONLY.values()) | {"simulations", "bench"}
    offenders = []
    for path in (ROOT / "fiun_peer").rglob("*.py"):
        for node in ast.parse(path.read_text(), str(path)).body:  # top level, not inside functions
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in banned]
    assert not offenders


def test_every_declared_dependency_is_pinned() -> None:
    pins = {_name(line): line for line in (ROOT / "constraints.txt").read_text().split() if "==" in line}
    declared = PYPROJECT["project"]["dependencies"] + [r for rs in PYPROJECT["project"]["optional-dependencies"]
                                                       .values() for r in rs]
    assert {_name(r) for r in declared} - set(pins) == set()
