"""The checked-in generated code must be exactly what `python -m fiun_peer.rpc.regenerate` produces."""

from __future__ import annotations

from pathlib import Path

from fiun_peer.rpc import regenerate


def test_checked_in_code_matches_proto(tmp_path: Path) -> None:
    regenerate.generate(tmp_path / "generated")
    fresh = regenerate.generated_tree(tmp_path / "generated")
    checked_in = regenerate.generated_tree(regenerate.GENERATED_DIR)
    assert set(fresh) == set(checked_in), "generated file set differs: run `make proto`"
    stale = sorted(name for name in fresh if fresh[name] != checked_in[name])
    assert not stale, f"stale generated files {stale}: run `make proto`"


def test_every_proto_is_generated() -> None:
    names = {p.stem for p in regenerate.proto_files()}
    assert names == {"admin", "fisher", "records"}
    tree = regenerate.generated_tree(regenerate.GENERATED_DIR)
    for stem in names:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"fiun/v1/{stem}{suffix}" in tree


def test_generated_imports_are_package_relative() -> None:
    from fiun_peer.rpc import admin_pb2, admin_pb2_grpc, fisher_pb2_grpc, records_pb2_grpc

    for module in (admin_pb2_grpc, fisher_pb2_grpc, records_pb2_grpc):
        text = Path(module.__file__).read_text()
        assert "from fiun.v1 import" not in text
    assert admin_pb2.StatusReply.__module__ == "fiun_peer.rpc.generated.fiun.v1.admin_pb2"
    # The descriptor keeps the proto path (what reflection clients see).
    assert admin_pb2.DESCRIPTOR.name == "fiun/v1/admin.proto"


def test_every_service_rpc_and_field_is_documented() -> None:
    # The API reference is generated from proto comments, so none may be missing.
    for proto in regenerate.proto_files():
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith(("service ", "rpc ", "message ")) or (
                    stripped.endswith(";") and "=" in stripped
                    and not stripped.startswith(("//", "syntax"))):
                above = lines[i - 1].strip() if i else ""
                assert above.startswith("//"), f"{proto.name}:{i + 1} undocumented: {stripped}"
