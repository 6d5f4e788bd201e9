"""Write the API reference (docs/admin-api.md) from the comments in ``proto/``: ``make apidoc``.

The ``.proto`` files are the one place the API is described; this turns their comments (the line
comments right above each service, rpc, message and field) into Markdown. tests/test_apidoc.py fails
when the checked-in document is stale.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fiun_peer.rpc.regenerate import PROTO_ROOT, REPO_ROOT, proto_files

DOC_PATH = REPO_ROOT / "docs" / "admin-api.md"

_RPC = re.compile(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)")
_FIELD = re.compile(r"((?:repeated|optional)\s+)?(map\s*<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")


@dataclass
class Rpc:
    name: str
    request: str
    response: str
    client_stream: bool
    server_stream: bool
    doc: str


@dataclass
class Field:
    name: str
    type: str
    number: int
    doc: str


@dataclass
class Message:
    name: str
    doc: str
    fields: list[Field] = field(default_factory=list)


@dataclass
class ProtoFile:
    path: str
    package: str = ""
    doc: str = ""
    services: dict[str, tuple[str, list[Rpc]]] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)


def parse(path: Path) -> ProtoFile:
    """Services, rpcs, messages and fields of one proto3 file, each with the comment above it."""
    out = ProtoFile(path=path.relative_to(PROTO_ROOT).as_posix())
    comment: list[str] = []
    service: str | None = None
    message: Message | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
            continue
        doc, comment = " ".join(comment), []
        if not line or line.startswith("syntax"):
            continue
        if line.startswith("package "):
            out.package, out.doc = line.split()[1].rstrip(";"), doc
        elif line.startswith("service "):
            service = line.split()[1].rstrip("{")
            out.services[service] = (doc, [])
        elif line.startswith("message "):
            message = Message(line.split()[1].rstrip("{"), doc)
            out.messages.append(message)
            if line.endswith("{}"):
                message = None
        elif line.startswith("rpc ") and service is not None:
            m = _RPC.match(line)
            if not m:
                raise ValueError(f"{path.name}: cannot parse {line!r}")
            out.services[service][1].append(Rpc(m[1], m[3], m[5], bool(m[2]), bool(m[4]), doc))
        elif line.startswith("}"):
            service = message = None
        elif message is not None:
            m = _FIELD.match(line)
            if not m:
                raise ValueError(f"{path.name}: cannot parse field {line!r}")
            kind = "repeated " if (m[1] or "").strip() == "repeated" else ""
            out.messages[-1].fields.append(Field(m[3], kind + re.sub(r"\s+", " ", m[2]), int(m[4]), doc))
    return out


def _link(type_name: str, known: set[str]) -> str:
    base = type_name.removeprefix("repeated ")
    shown = f"[`{base}`](#{base.lower()})" if base in known else f"`{base}`"
    return ("repeated " if type_name.startswith("repeated ") else "") + shown


def render(files: list[ProtoFile]) -> str:
    known = {m.name for f in files for m in f.messages}
    lines = ["# fiun-peer gRPC API reference", "",
             "Generated from the comments in `proto/fiun/v1/*.proto` by `make apidoc` "
             "(`python -m fiun_peer.rpc.apidoc`); do not edit by hand. AdminService is the operator's API "
             "(it needs the admin token or an admin client certificate); FisherService and RecordService "
             "are what peers call on each other. Every server also offers `grpc.health.v1.Health` and "
             "server reflection.", ""]
    # AdminService first: it is what an operator scripts against.
    ordered = sorted(files, key=lambda f: (not f.services.get("AdminService"), f.path))
    for f in ordered:
        for svc, (doc, rpcs) in f.services.items():
            lines += [f"## {svc}", "", f"`{f.package}.{svc}` in `proto/{f.path}`. {doc}".rstrip(), ""]
            if f.doc:
                lines += [f.doc, ""]
            for r in rpcs:
                req = ("stream " if r.client_stream else "") + _link(r.request, known)
                resp = ("stream " if r.server_stream else "") + _link(r.response, known)
                lines += [f"### {svc}.{r.name}", "", f"{req} → {resp}", "", r.doc, ""]
    lines += ["## Messages", ""]
    for f in ordered:
        for m in f.messages:
            lines += [f"### {m.name}", "", f"{m.doc} (`proto/{f.path}`)", ""]
            if not m.fields:
                lines += ["No fields.", ""]
                continue
            lines += ["| # | field | type | description |", "|---|---|---|---|"]
            for fl in m.fields:
                desc = fl.doc.replace("|", "\\|")
                lines.append(f"| {fl.number} | `{fl.name}` | {_link(fl.type, known)} | {desc} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def generate() -> str:
    return render([parse(p) for p in proto_files()])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DOC_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(generate(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
