"""docs/admin-api.md is generated from the proto comments and must not drift from them."""

from __future__ import annotations

from fiun_peer.rpc import admin_pb2, apidoc, records_pb2


def test_checked_in_api_doc_is_current() -> None:
    assert apidoc.DOC_PATH.read_text(encoding="utf-8") == apidoc.generate(), \
        "docs/admin-api.md is stale: run `make apidoc`"


def test_doc_covers_every_rpc_and_field_of_the_descriptors() -> None:
    # Compare with the compiled descriptors, not with the parser's own output, so a parsing slip shows.
    text = apidoc.generate()
    for module in (admin_pb2, records_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"### {service.name}.{method.name}" in text
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert f"### {message.name}" in text
            for f in message.fields:
                assert f"| {f.number} | `{f.name}` |" in text, f"{message.name}.{f.name} missing"


def test_comments_reach_the_doc(tmp_path, monkeypatch) -> None:
    proto = tmp_path / "fiun" / "v1" / "x.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text('syntax = "proto3";\n// File doc.\npackage fiun.v1;\n// Svc doc.\nservice S {\n'
                     '  // Call doc.\n  rpc Call(Req) returns (stream Req);\n}\n// Req doc.\nmessage Req {\n'
                     '  // Ids | with a pipe.\n  repeated string ids = 1;\n  // A map.\n'
                     '  map<string, uint64> counts = 2;\n}\n')
    monkeypatch.setattr(apidoc, "PROTO_ROOT", tmp_path)
    doc = apidoc.render([apidoc.parse(proto)])
    assert "### S.Call" in doc and "Call doc." in doc and "stream [`Req`](#req)" in doc
    assert "| 1 | `ids` | repeated `string` | Ids \\| with a pipe. |" in doc
    assert "| 2 | `counts` | `map<string, uint64>` | A map. |" in doc
