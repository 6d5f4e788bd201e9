"""Issue 16's structure rules, checked on the tree as it is (docs/architecture.md says why each exists).

- no function in fiun_peer/ over 120 lines and no class over 350 (generated gRPC code aside);
- gRPC lives in fiun_peer/rpc/: every servicer and every ``import grpc`` of the product is there;
- bench/ and tests/ never edit ``sys.path`` (bench is a package; pytest's pythonpath is the root);
- every module of fiun_peer/ is reachable from the product's entry points (no experiment-only code);
- docs/architecture.md names every module of fiun_peer/ and every module it names exists;
- code comments cite docs/architecture.md, never a design file outside the repository;
- nothing imports upward: core/ imports nothing of the peer, the agent's parts nothing of the network side.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fiun_peer"
MAX_FUNCTION, MAX_CLASS = 120, 350
GRPC_PACKAGES = {"grpc", "grpc_health", "grpc_reflection", "grpc_status", "grpc_tools"}


def product_modules() -> dict[str, Path]:
    """Dotted name -> file for every hand-written module of the product."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
            continue
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def test_no_oversized_function_or_class():
    too_big = []
    for name, path in product_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and size > MAX_FUNCTION:
                too_big.append(f"{name}.{node.name}: function of {size} lines")
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
                too_big.append(f"{name}.{node.name}: class of {size} lines")
    assert not too_big, "split these (docs/architecture.md, 'where a change goes'):\n" + "\n".join(too_big)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute dotted names a module imports at run time (relative imports resolved; what an
    ``if TYPE_CHECKING:`` block imports is for type hints only and does not count)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.add(stem)
            out.update(f"{stem}.{a.name}" for a in node.names)
    return out


def test_grpc_lives_in_rpc():
    outside = []
    for name, path in product_modules().items():
        if name.startswith("fiun_peer.rpc"):
            continue
        text = path.read_text()
        grpc_imports = [i for i in _imports(path, name) if i.split(".")[0] in GRPC_PACKAGES]
        if grpc_imports:
            outside.append(f"{name} imports {sorted(grpc_imports)[0]}")
        if re.search(r"class \w+\([^)]*Servicer\)", text):
            outside.append(f"{name} defines a gRPC servicer")
    assert not outside, "\n".join(outside)


def test_bench_and_tests_leave_sys_path_alone():
    edits = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*(\+?=|\[)")
    offenders = [str(p.relative_to(ROOT)) for folder in ("bench", "tests") for p in (ROOT / folder).rglob("*.py")
                 if p.name != Path(__file__).name and edits.search(p.read_text())]
    assert not offenders, offenders


def entry_points() -> set[str]:
    """Where the product starts: console scripts plus the modules the Makefile runs with -m."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"].get("scripts", {}).values()
    starts = {s.split(":")[0] for s in scripts if s.startswith("fiun_peer")}
    starts |= set(re.findall(r"-m (fiun_peer[\w.]*)", (ROOT / "Makefile").read_text()))
    return starts


def test_every_product_module_serves_the_product():
    modules = product_modules()
    seen, todo = set(), [m for m in entry_points() if m in modules]
    assert todo, "no fiun_peer entry point found in pyproject.toml"
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parent = m.rpartition(".")[0]
        if parent in modules:
            todo.append(parent)
        for imp in _imports(modules[m], m):
            # "from .formats import zoo" names a module; "from .x import func" names x
            for cand in (imp, imp.rpartition(".")[0]):
                if cand in modules and cand not in seen:
                    todo.append(cand)
    unused = sorted(set(modules) - seen)
    assert not unused, f"not reachable from {sorted(entry_points())}: {unused} (experiment code goes to simulations/)"


def test_architecture_document_matches_the_code():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"\bfiun_peer/[\w/]+\.py\b", doc))
    missing_files = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing_files, f"docs/architecture.md names files that do not exist: {missing_files}"
    unnamed = sorted(str(p.relative_to(ROOT)) for n, p in product_modules().items()
                     if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in named)
    assert not unnamed, f"docs/architecture.md does not say what these are for: {unnamed}"


def test_comments_cite_the_repository_not_an_outside_design_file():
    offenders = [str(p.relative_to(ROOT)) for folder in ("fiun_peer", "simulations", "bench", "tests")
                 for p in (ROOT / folder).rglob("*.py")
                 if p.name != Path(__file__).name and "DESIGN.md" in p.read_text()]
    assert not offenders, offenders


AGENT_PARTS = ("agent", "ledger", "reconcile", "publication", "own_models", "progress", "errors", "state")
NETWORK_SIDE = ("fiun_peer.rpc", "fiun_peer.gossip", "fiun_peer.membership", "fiun_peer.delivery",
                "fiun_peer.anti_entropy", "fiun_peer.daemon", "fiun_peer.join")


def test_nothing_imports_upward():
    """core/ knows nothing of the peer; the agent's parts reach the network only through seams.py."""
    modules, wrong = product_modules(), []
    for name, path in modules.items():
        imports = {i for i in _imports(path, name) if i.startswith("fiun_peer")}
        if name.startswith("fiun_peer.core"):
            wrong += [f"{name} imports {i}" for i in sorted(imports) if not i.startswith("fiun_peer.core")]
        if name.rpartition(".")[2] in AGENT_PARTS and name.count(".") == 1:
            wrong += [f"{name} imports {i}" for i in sorted(imports) if i.startswith(NETWORK_SIDE)]
    assert not wrong, "\n".join(wrong)
