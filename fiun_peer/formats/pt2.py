"""Open a ``torch.export`` archive (.pt2) without running code from it.

``torch.export.load`` is documented as unsafe on untrusted files ("uses pickle under the hood"),
and reading its code shows where: weights or constants flagged ``use_pickle`` go to
``torch.load(weights_only=False)``, torchbind and opaque constants to ``pickle.loads``, the sample
inputs to ``torch.load`` with a ``weights_only=False`` fallback, legacy ``.pt`` weight files too,
the symbolic-shape expressions to ``sympy.sympify`` (which evaluates Python), and a program's
``guards_code`` becomes a Python function when the program is turned into a module. So before
``torch.export.load`` sees the bytes, :func:`check_archive` reads the archive with ``zipfile`` and
``json`` alone and refuses anything that would take one of those paths:

- entries other than a plain single-program archive (one ``models/NAME.json``, its weights and
  tensor-constant payloads and configs, its sample inputs, the format/version markers), e.g. a
  ``data.pkl`` (a ``torch.save`` pickle), AOTInductor or ExecuTorch payloads, custom objects;
- any payload flagged ``use_pickle``;
- sample inputs that ``torch.load(weights_only=True)`` cannot read (so torch's fallback never runs);
- ``guards_code``; operators outside ATen, prims and Python's ``operator``/``math`` (no higher-order
  operators, no custom operator libraries);
- symbolic expressions with anything but symbol names, numbers, arithmetic and a short list of
  sympy functions;
- tensors larger than their payloads, or more numbers than :data:`bounds.MAX_MODEL_PARAMETERS`.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from . import bounds
from .base import FormatError

MAX_ENTRIES = 100_000
_ROOT = re.compile(r"[A-Za-z0-9_.-]+")
_MODEL = re.compile(r"models/([A-Za-z0-9_]+)\.json")
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
#: Targets a program may call: ATen and prims operators, and the Python operators FX uses on sizes.
_TARGET = re.compile(r"(torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.[a-z_]+|math\.[a-z_]+"
                     r"|torch\.sym_[a-z_]+|torch\._sym_[a-z_]+)")
#: What a symbolic-shape expression may contain (sympy.sympify evaluates it as Python).
_TOKEN = re.compile(r"\s*(?:(?P<sym>'[a-z]+[0-9]+')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>[0-9]+(?:\.[0-9]+)?)"
                    r"|(?P<op>\*\*|//|[-+*/%(),=<>!]=?))")
_SYMPY_NAMES = {"Symbol", "Integer", "Float", "Rational", "Max", "Min", "Mod", "Abs", "Eq", "Ne", "Lt", "Le", "Gt",
                "Ge", "And", "Or", "Not", "oo", "zoo", "nan", "True", "False", "positive", "integer", "real",
                "nonnegative", "negative", "finite", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
                "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
                "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
                "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
                "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt", "floor", "ceiling", "Piecewise", "ITE"}
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
#: torch._export.serde.schema.ScalarType -> bytes per element (the plain dtypes a classifier uses).
_ELEMENT_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}


def _refuse(why: str) -> FormatError:
    return FormatError(f"the torch.export archive is refused: {why}")


def check_expression(text: object) -> None:
    """Raise unless ``text`` is a symbolic-shape expression made of allowed tokens only."""
    if not isinstance(text, str) or len(text) > 4096:
        raise _refuse("a symbolic expression is not a short string")
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise _refuse(f"symbolic expression {text[:80]!r} holds {text[pos:pos + 20]!r}")
        if m.group("name") and m.group("name") not in _SYMPY_NAMES and not _SYMBOL.fullmatch(m.group("name")):
            raise _refuse(f"symbolic expression {text[:80]!r} names {m.group('name')!r}")
        pos = m.end()


def _walk(obj: Any) -> Iterator[tuple[str, Any, Any]]:
    """(key, value, parent) for every dict entry in a JSON tree."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                yield k, v, cur
                stack.append(v)
        elif isinstance(cur, list):
            stack.extend(cur)


def _json(z: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(z.read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"{name} is not JSON: {exc}") from None


def _check_payloads(z: zipfile.ZipFile, root: str, config_name: str, prefix: str, names: set[str]) -> int:
    """A weights or constants payload config: no pickles, known files, tensors inside their payloads.
    Returns the number of tensor elements it declares."""
    config = _json(z, f"{root}/{config_name}")
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(f"{config_name} has no config object")
    directory = config_name.rsplit("/", 1)[0]
    total = 0
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(f"{fqn} is stored as a pickle (use_pickle); only plain tensors are accepted")
        path = meta.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(rf"{prefix}[0-9]+", path):
            raise _refuse(f"{fqn} names payload {str(path)[:60]!r}")
        record = f"{directory}/{path}"
        if record not in names:
            raise _refuse(f"{fqn}'s payload {record} is missing")
        tm = meta.get("tensor_meta")
        try:
            sizes = [s["as_int"] for s in tm["sizes"]]
            strides = [s["as_int"] for s in tm["strides"]]
            offset = tm["storage_offset"]["as_int"]
            element = _ELEMENT_SIZE[tm["dtype"]]
        except (KeyError, TypeError):
            raise _refuse(f"{fqn} has no plain tensor description (sizes, strides, dtype)") from None
        if not all(isinstance(v, int) and v >= 0 for v in [*sizes, *strides, offset]) or len(sizes) != len(strides):
            raise _refuse(f"{fqn} has a malformed shape")
        numel = math.prod(sizes)
        total += numel
        span = 0 if numel == 0 else offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) + 1
        available = z.getinfo(f"{root}/{record}").file_size // element
        if span > available and available > 0 or (available == 0 and numel > 0):
            raise _refuse(f"{fqn} ({sizes}) does not fit its payload of {available:,} elements")
    return total


def check_archive(artifact: bytes) -> str:
    """Validate a .pt2 archive as described in the module docstring; returns the program's name."""
    bounds.check_artifact_size(artifact)
    try:
        z = zipfile.ZipFile(io.BytesIO(artifact))
        infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise FormatError(f"the artifact is not a torch.export archive (.pt2, a zip file): {exc}") from None
    if not infos or len(infos) > MAX_ENTRIES:
        raise _refuse(f"it has {len(infos)} entries")
    if sum(i.file_size for i in infos) > 2 * bounds.MAX_ARTIFACT_BYTES or any(i.flag_bits & 1 for i in infos):
        raise _refuse("it unpacks to more than twice the artifact bound, or is encrypted")
    roots = {i.filename.split("/", 1)[0] for i in infos}
    root = roots.pop() if len(roots) == 1 else ""
    if not _ROOT.fullmatch(root) or any("/" not in i.filename for i in infos):
        raise _refuse("its entries must sit under one top-level folder")
    rel = {i.filename[len(root) + 1:] for i in infos}
    pickles = sorted(e for e in rel if e.endswith((".pkl", ".pickle")))
    if pickles:
        raise _refuse(f"it holds a pickle ({pickles[0]}): a torch.save file or pickled objects; save the program "
                      "with torch.export.save")
    models = [m.group(1) for m in map(_MODEL.fullmatch, rel) if m]
    if len(models) != 1:
        raise _refuse(f"it holds {len(models)} programs; one is expected")
    name = models[0]
    allowed = _FIXED | {f"models/{name}.json", f"data/weights/{name}_weights_config.json",
                        f"data/constants/{name}_constants_config.json", f"data/sample_inputs/{name}.pt"}
    for entry in sorted(rel):
        if entry not in allowed and not re.fullmatch(r"data/weights/weight_[0-9]+|data/constants/tensor_[0-9]+", entry):
            raise _refuse(f"it holds {entry!r}, which torch.export.save does not write for a plain program "
                          "(a pickle, a custom object, compiled code?)")
    missing = sorted({f"models/{name}.json", f"data/weights/{name}_weights_config.json", "archive_format",
                      "archive_version", f"data/constants/{name}_constants_config.json"} - rel)
    if missing:
        raise _refuse(f"it lacks {missing}")
    from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_VALUE, ARCHIVE_VERSION_VALUE

    if z.read(f"{root}/archive_format").decode(errors="replace").strip() != ARCHIVE_FORMAT_VALUE or \
            z.read(f"{root}/archive_version").decode(errors="replace").strip() != ARCHIVE_VERSION_VALUE:
        raise _refuse("its archive format or version is not the one this torch writes")
    names = {f"data/weights/{e.split('/')[-1]}" for e in rel if e.startswith("data/weights/")} | \
            {f"data/constants/{e.split('/')[-1]}" for e in rel if e.startswith("data/constants/")}
    elements = _check_payloads(z, root, f"data/weights/{name}_weights_config.json", "weight_", names)
    elements += _check_payloads(z, root, f"data/constants/{name}_constants_config.json", "tensor_", names)
    if elements > bounds.MAX_MODEL_PARAMETERS:
        raise FormatError(f"the program has {elements:,} weight numbers, more than the {bounds.MAX_MODEL_PARAMETERS:,} "
                          "this peer accepts")
    sample = f"data/sample_inputs/{name}.pt"
    if sample in rel and z.getinfo(f"{root}/{sample}").file_size:
        try:  # torch's own loader tries weights_only=True first and falls back to a full unpickle
            torch.load(io.BytesIO(z.read(f"{root}/{sample}")), weights_only=True)
        except Exception as exc:
            raise _refuse(f"its sample inputs need a full unpickle: {str(exc)[:200]}") from None
    _check_program(_json(z, f"{root}/models/{name}.json"))
    return name


def _check_program(program: Any) -> None:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refuse("its program has no graph_module")
    if program.get("guards_code"):
        raise _refuse("it carries guards_code (Python source that would be executed)")
    for key, value, parent in _walk(program):
        if key == "expr_str":
            check_expression(value)
        elif key == "target" and "inputs" in parent and "outputs" in parent:
            if not isinstance(value, str) or not _TARGET.fullmatch(value):
                raise _refuse(f"it calls {str(value)[:80]!r}; only ATen/prims operators are accepted (export without "
                              "custom operators or control flow)")
    for symbol in (program.get("range_constraints") or {}):
        if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
            raise _refuse(f"range constraint {str(symbol)[:40]!r} is not a symbol name")
