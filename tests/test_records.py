"""Signed records: every kind round-trips; any tampering is rejected with the right reason."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from fiun_peer import records as R
from fiun_peer.identity import Identity

ALICE = Identity.from_seed(bytes(range(32)), "alice")
BOB = Identity.from_seed(bytes(range(1, 33)), "bob")
D1, D2, D3, D4 = (hashlib.sha256(bytes([i])).hexdigest() for i in range(4))


def lineage(identity: Identity = ALICE, **overrides: Any) -> R.Record:
    fields: dict[str, Any] = dict(
        model_id="client-1", model_digest=D1, version=1,
        parents=[{"model_id": "base", "digest": D2, "relation": "finetune"}], relation="finetune",
        labels=[3, 1, 2, 1], head_tensors=["head.weight", "head.bias"],
        architecture={"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10},
        model_fisher_digests={"empirical": D3}, previous_digest=None)
    fields.update(overrides)
    return R.build_lineage(identity, **fields)


def request(identity: Identity = ALICE, **overrides: Any) -> R.Record:
    fields: dict[str, Any] = dict(request_id="req-1", forget_labels=[2, 0], settings={"alpha": 10.0},
                                  created_at=1700000000.5)
    fields.update(overrides)
    return R.build_request(identity, **fields)


def announcement(identity: Identity = ALICE, **overrides: Any) -> R.Record:
    fields: dict[str, Any] = dict(request_id="req-1", model_id="client-1", model_digest=D1,
                                  fisher_digest=D3, shapes={"head.weight": [10, 64], "head.bias": [10]},
                                  estimator="batch", labels=[2])
    fields.update(overrides)
    return R.build_announcement(identity, **fields)


def receipt(identity: Identity = ALICE, **overrides: Any) -> R.Record:
    fields: dict[str, Any] = dict(request_id="req-1", model_id="client-1", old_digest=D1, new_digest=D2)
    fields.update(overrides)
    return R.build_receipt(identity, **fields)


BUILDERS: dict[str, Callable[..., R.Record]] = {
    "lineage": lineage, "request": request, "announcement": announcement, "receipt": receipt}


def reason_of(envelope: bytes) -> str:
    with pytest.raises(R.RecordError) as info:
        R.parse_record(envelope)
    return info.value.reason


def resign(identity: Identity, statement: dict[str, Any], *, keyid: str | None = None) -> bytes:
    """An envelope around an arbitrary statement, validly signed (to reach the predicate checks)."""
    payload = R.canonical_json(statement)
    sig = identity.sign(R.pae(R.PAYLOAD_TYPE, payload))
    return R.canonical_json({"payload": base64.b64encode(payload).decode(), "payloadType": R.PAYLOAD_TYPE,
                             "signatures": [{"keyid": keyid or identity.public_key_hex,
                                             "sig": base64.b64encode(sig).decode()}]})


def statement_of(record: R.Record) -> dict[str, Any]:
    env = json.loads(record.envelope)
    return json.loads(base64.b64decode(env["payload"]))


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_round_trip(kind: str) -> None:
    record = BUILDERS[kind]()
    parsed = R.parse_record(record.envelope)
    assert parsed == record
    assert parsed.predicate == record.predicate
    assert parsed.kind == kind
    assert parsed.predicate_type == R.TYPE_BY_KIND[kind]
    assert parsed.predicate_type.startswith("https://fiun-peer.dev/")
    assert parsed.signer == ALICE.public_key_hex
    assert parsed.record_id == hashlib.sha256(record.envelope).hexdigest()
    env = json.loads(record.envelope)
    assert record.envelope == json.dumps(env, sort_keys=True, separators=(",", ":")).encode()
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert env["signatures"][0]["keyid"] == ALICE.public_key_hex
    statement = statement_of(record)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": record.subject_name,
                                     "digest": {"sha256": record.subject_digest}}]


def test_signature_is_over_dsse_pae() -> None:
    record = receipt()
    env = json.loads(record.envelope)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    expected_pae = b"DSSEv1 28 application/vnd.in-toto+json %d " % len(payload) + payload
    assert R.pae(R.PAYLOAD_TYPE, payload) == expected_pae
    assert ALICE.sign(expected_pae) == sig


def test_predicate_contents() -> None:
    lin = lineage()
    assert lin.subject_name == "model:client-1" and lin.subject_digest == D1
    assert lin.predicate["labels"] == [1, 2, 3]
    assert lin.predicate["previous_digest"] is None
    req = request()
    assert req.subject_name == "request:req-1"
    assert req.subject_digest == hashlib.sha256(b"req-1").hexdigest()
    assert req.predicate["forget_labels"] == [0, 2]
    assert req.predicate["requester"] == ALICE.public_key_hex
    ann = announcement()
    assert ann.subject_name == "fisher:req-1:client-1" and ann.subject_digest == D3
    rec = receipt()
    assert rec.subject_name == "model:client-1" and rec.subject_digest == D2
    second = lineage(version=2, previous_digest=D2)
    assert second.predicate["previous_digest"] == D2
    root = lineage(parents=[], relation="root")
    assert root.predicate["parents"] == []


def test_same_content_same_id_distinct_content_distinct_id() -> None:
    assert receipt().record_id == receipt().record_id
    assert receipt().record_id != receipt(new_digest=D3).record_id
    assert receipt().record_id != receipt(BOB).record_id


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_any_flipped_byte_is_rejected(kind: str) -> None:
    envelope = BUILDERS[kind]().envelope
    reasons = set()
    for i in range(len(envelope)):
        for mask in (0x01, 0x20):
            tampered = bytearray(envelope)
            tampered[i] ^= mask
            reasons.add(reason_of(bytes(tampered)))
    assert reasons <= {"malformed", "bad_signature"}
    assert "bad_signature" in reasons  # payload and sig bytes hit the signature check


def test_swapped_signature_is_bad_signature() -> None:
    a, b = receipt(), receipt(new_digest=D3)
    env_a, env_b = json.loads(a.envelope), json.loads(b.envelope)
    env_a["signatures"] = env_b["signatures"]
    assert reason_of(R.canonical_json(env_a)) == "bad_signature"
    # Claiming another signer's key for a valid signature fails as well.
    env = json.loads(a.envelope)
    env["signatures"][0]["keyid"] = BOB.public_key_hex
    assert reason_of(R.canonical_json(env)) == "bad_signature"


def test_unknown_predicate_type() -> None:
    statement = statement_of(receipt())
    statement["predicateType"] = "https://fiun-peer.dev/receipt/v2"
    assert reason_of(resign(ALICE, statement)) == "unknown_predicate"


@pytest.mark.parametrize("kind,change", [
    ("lineage", lambda s: s["subject"][0].update(name="model:other")),
    ("request", lambda s: s["subject"][0]["digest"].update(sha256=D1)),
    ("request", lambda s: s["subject"][0].update(name="request:req-2")),
    ("announcement", lambda s: s["subject"][0]["digest"].update(sha256=D1)),
    ("announcement", lambda s: s["subject"][0].update(name="fisher:req-1:client-2")),
    ("receipt", lambda s: s["subject"][0]["digest"].update(sha256=D1)),
    ("receipt", lambda s: s["subject"][0].update(name="model:client-2")),
])
def test_subject_mismatch(kind: str, change: Callable[[dict[str, Any]], None]) -> None:
    statement = statement_of(BUILDERS[kind]())
    change(statement)
    assert reason_of(resign(ALICE, statement)) == "subject_mismatch"


def test_too_large() -> None:
    with pytest.raises(R.RecordError) as info:
        lineage(architecture={"blob": "x" * (300 * 1024)})
    assert info.value.reason == "too_large"
    record = receipt()
    assert reason_of(record.envelope + b" " * (R.MAX_RECORD_BYTES)) == "too_large"
    with pytest.raises(R.RecordError) as info:
        R.parse_record(record.envelope, max_bytes=len(record.envelope) - 1)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("kind,key,value", [
    ("lineage", "version", 0),
    ("lineage", "version", "1"),
    ("lineage", "labels", [-1]),
    ("lineage", "labels", [2, 1]),
    ("lineage", "labels", [True]),
    ("lineage", "relation", "sideload"),
    ("lineage", "relation", "root"),
    ("lineage", "parents", [{"model_id": "base", "digest": "nothex", "relation": "finetune"}]),
    ("lineage", "parents", [{"model_id": "client-1", "digest": D2, "relation": "finetune"}]),
    ("lineage", "previous_digest", D2),  # version 1 has no previous version
    ("lineage", "architecture", []),
    ("lineage", "model_fisher_digests", {"empirical": "x"}),
    ("lineage", "head_tensors", [1]),
    ("request", "forget_labels", []),
    ("request", "created_at", "yesterday"),
    ("request", "requester", BOB.public_key_hex),
    ("request", "settings", None),
    ("announcement", "shapes", {"head.weight": [-1]}),
    ("announcement", "shapes", {}),
    ("announcement", "model_digest", D1.upper()),
    ("announcement", "labels", []),
    ("receipt", "old_digest", None),
    ("receipt", "request_id", "bad:id"),
])
def test_invalid_field(kind: str, key: str, value: Any) -> None:
    statement = statement_of(BUILDERS[kind]())
    statement["predicate"][key] = value
    assert reason_of(resign(ALICE, statement)) == "invalid_field"


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_missing_and_extra_predicate_fields(kind: str) -> None:
    statement = statement_of(BUILDERS[kind]())
    key = sorted(statement["predicate"])[0]
    missing = json.loads(json.dumps(statement))
    del missing["predicate"][key]
    assert reason_of(resign(ALICE, missing)) == "invalid_field"
    statement["predicate"]["surprise"] = 1
    assert reason_of(resign(ALICE, statement)) == "invalid_field"


def test_builders_validate_their_input() -> None:
    with pytest.raises(R.RecordError) as info:
        receipt(new_digest="not-a-digest")
    assert info.value.reason == "invalid_field"
    with pytest.raises(R.RecordError) as info:
        request(forget_labels=[1.5])
    assert info.value.reason == "invalid_field"
    with pytest.raises(R.RecordError):
        lineage(version=2)  # a later version must name its previous digest


@pytest.mark.parametrize("envelope", [
    b"", b"not json", b"[]", b'{"payload":"","payloadType":"x"}', "é".encode("latin-1"),
    b'{"payload":"!!!","payloadType":"application/vnd.in-toto+json","signatures":[]}',
])
def test_malformed(envelope: bytes) -> None:
    assert reason_of(envelope) == "malformed"


def test_envelope_in_any_json_encoding_is_the_same_record() -> None:
    """DSSE signs the payload, not the envelope: any JSON encoding of the envelope is the record,
    stored in canonical form under one id, so duplicates still drop by content."""
    original = receipt()
    env = json.loads(original.envelope)
    encodings = [
        json.dumps(env, indent=2).encode(),                                    # pretty-printed
        json.dumps(dict(reversed(list(env.items()))), separators=(",", ":")).encode(),  # key order
        b"\n  " + json.dumps(env).encode() + b"\r\n",                          # whitespace around it
        original.envelope.replace(b'"payloadType"', b'"\\u0070ayloadType"'),   # an escaped character
    ]
    for encoded in encodings:
        assert encoded != original.envelope
        rec = R.parse_record(encoded)
        assert rec.envelope == original.envelope and rec.record_id == original.record_id, encoded[:60]


def test_envelope_with_duplicate_keys_is_malformed() -> None:
    # Parsers that keep the first or the last of two "payload"s would read different records.
    text = receipt().envelope.decode()
    doubled = text.replace('{"payload":', '{"payload":"AAAA","payload":', 1)
    assert reason_of(doubled.encode()) == "malformed"


def test_non_canonical_statement_is_malformed() -> None:
    """The statement is the signed payload: its bytes are what is signed, so one form only."""
    stmt = statement_of(receipt())
    payload = json.dumps(stmt, indent=1).encode()
    sig = ALICE.sign(R.pae(R.PAYLOAD_TYPE, payload))
    env = R.canonical_json({"payload": base64.b64encode(payload).decode(), "payloadType": R.PAYLOAD_TYPE,
                            "signatures": [{"keyid": ALICE.public_key_hex, "sig": base64.b64encode(sig).decode()}]})
    assert reason_of(env) == "malformed"


def test_lineage_names_no_training_data() -> None:
    assert "data_digest" not in lineage().predicate
    assert "data_digest" not in statement_of(lineage())["predicate"]


def test_legacy_lineage_with_data_digest_is_accepted() -> None:
    """Records made before issue 14 still name the data digest: accepted (they are validly signed
    parts of existing lineages), the field is checked for form and otherwise ignored."""
    stmt = statement_of(lineage())
    stmt["predicate"]["data_digest"] = D4
    rec = R.parse_record(resign(ALICE, stmt))
    assert rec.kind == "lineage" and rec.predicate["data_digest"] == D4
    stmt["predicate"]["data_digest"] = None                    # some old roots had none
    assert R.parse_record(resign(ALICE, stmt)).kind == "lineage"
    stmt["predicate"]["data_digest"] = "not a digest"
    assert reason_of(resign(ALICE, stmt)) == "invalid_field"


def test_wrong_statement_type_is_malformed() -> None:
    statement = statement_of(receipt())
    statement["_type"] = "https://in-toto.io/Statement/v0.1"
    assert reason_of(resign(ALICE, statement)) == "malformed"


def test_record_error_reasons_are_fixed() -> None:
    assert R.REASONS == {"malformed", "too_large", "bad_signature", "unknown_predicate",
                         "subject_mismatch", "invalid_field"}
    with pytest.raises(ValueError):
        R.RecordError("whatever", "x")


def _not_affected(**overrides: Any) -> R.Record:
    fields: dict[str, Any] = dict(old_digest=D1, new_digest=D1, state=R.NOT_AFFECTED,
                                  reason="derived from b v2 (790dc535a3b7), a version that had applied it")
    return receipt(**{**fields, **overrides})


def test_a_not_affected_receipt_round_trips_and_an_applied_one_keeps_its_old_shape() -> None:
    spared = _not_affected()
    again = R.parse_record(spared.envelope)
    assert (R.receipt_state(again.predicate), again.predicate["reason"]) == ("not_affected", spared.predicate["reason"])
    applied = receipt()
    assert set(applied.predicate) == R.RECEIPT_KEYS and R.receipt_state(applied.predicate) == "applied"


@pytest.mark.parametrize("change,why", [
    ({"state": "applied"}, "state"),                       # one meaning, one signed form: no state when applied
    ({"state": "maybe"}, "state"),
    ({"reason": ""}, "reason"),
    ({"reason": "  "}, "reason"),
    ({"reason": "x" * (R.MAX_REASON + 1)}, "reason"),
    ({"reason": "line\nbreak"}, "reason"),
    ({"reason": 7}, "reason"),
    ({"new_digest": D2}, "new_digest"),                    # not affected: the model keeps its version
])
def test_a_malformed_not_affected_receipt_is_refused_with_the_field(change: dict[str, Any], why: str) -> None:
    statement = statement_of(_not_affected())
    statement["predicate"].update(change)
    if "new_digest" in change:
        statement["subject"][0]["digest"]["sha256"] = change["new_digest"]
    with pytest.raises(R.RecordError) as info:
        R.parse_record(resign(ALICE, statement))
    assert info.value.reason == "invalid_field" and info.value.message.startswith(why), info.value.message


def test_a_receipt_with_a_state_needs_its_reason_and_the_other_way_round() -> None:
    for drop in ("state", "reason"):
        statement = statement_of(_not_affected())
        del statement["predicate"][drop]
        assert reason_of(resign(ALICE, statement)) == "invalid_field"
