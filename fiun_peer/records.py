"""Signed records: a DSSE envelope around an in-toto Statement v1, signed with the peer's Ed25519 key.

Four predicate types travel by gossip: lineage (a model version and its parents), unlearning requests,
Fisher announcements (a discovery node's Fisher blob digest) and receipts (old digest -> new digest,
or "not affected" with the reason).
DSSE signs the raw payload bytes through PAE, so the envelope around them may come in any valid JSON
encoding (pretty-printed, keys in another order, escaped characters): it is parsed and re-encoded as
canonical JSON (sorted keys, compact, ASCII), and the record's id is the sha256 of that canonical
form, so every encoding of one record has one id and duplicates drop by content. The statement
itself is the signed payload: its bytes are what the signature covers, so they must already be
canonical JSON (one statement, one signed form). Duplicate keys are refused in both: parsers that
keep the first or the last value would read different records.

A lineage record names the model version (its weights digest is the subject), its parents (each
with the digest of the parent *version* the model derived from), label set, head and architecture;
since issue 14 it does not name the owner's training data (the data digest stays in the owner's
local state). Older records that still carry ``data_digest`` are accepted and the field is ignored
(see docs/security.md).

Every check that can fail raises :class:`RecordError` with a machine-readable ``reason`` (see
:data:`REASONS`), which callers count and report.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fiun_peer.identity import Identity, verify_signature

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
LINEAGE_V1 = "https://fiun-peer.dev/lineage/v1"
REQUEST_V1 = "https://fiun-peer.dev/unlearning-request/v1"
ANNOUNCEMENT_V1 = "https://fiun-peer.dev/fisher-announcement/v1"
RECEIPT_V1 = "https://fiun-peer.dev/receipt/v1"
KIND_BY_TYPE = {LINEAGE_V1: "lineage", REQUEST_V1: "request", ANNOUNCEMENT_V1: "announcement",
                RECEIPT_V1: "receipt"}
TYPE_BY_KIND = {kind: uri for uri, kind in KIND_BY_TYPE.items()}
KINDS = tuple(TYPE_BY_KIND)
RELATIONS = ("aggregate", "finetune", "incremental", "distill", "transfer")
ROOT_RELATION = "root"  # the lineage `relation` of a model without parents
MAX_RECORD_BYTES = 256 * 1024
REASONS = frozenset({"malformed", "too_large", "bad_signature", "unknown_predicate", "subject_mismatch",
                     "invalid_field"})

# Ids appear inside subject names ("fisher:<request>:<model>") and file names: no ':' or '/'.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
RECEIPT_KEYS = frozenset({"request_id", "model_id", "old_digest", "new_digest"})
APPLIED, NOT_AFFECTED = "applied", "not_affected"   # receipt states
MAX_REASON = 1000
LINEAGE_KEYS = frozenset({"model_id", "version", "parents", "relation", "labels", "head_tensors", "architecture",
                          "model_fisher_digests", "previous_digest"})


class RecordError(ValueError):
    """A record failed to parse or verify; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown RecordError reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Record:
    """A verified record. ``envelope`` is the canonical encoding (as stored and served);
    ``predicate`` is derived from it; treat it as read-only."""

    envelope: bytes
    record_id: str
    predicate_type: str
    kind: str
    subject_name: str
    subject_digest: str
    predicate: dict[str, Any] = field(compare=False, hash=False)
    signer: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_id_of(envelope: bytes) -> str:
    """A record's id: lowercase hex sha256 of its (canonical) envelope bytes."""
    return sha256_hex(envelope)


def is_digest(value: object) -> bool:
    """True for a lowercase hex sha256 (64 characters)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def is_valid_id(value: object) -> bool:
    """True for a usable model or request id (see :data:`ID_PATTERN`)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes that get signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


# -- parsing ----------------------------------------------------------------------------------------


def parse_record(envelope: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> Record:
    """Parse and verify an envelope; raises :class:`RecordError` on any problem."""
    if not isinstance(envelope, bytes | bytearray | memoryview):
        raise RecordError("malformed", f"envelope must be bytes, not {type(envelope).__name__}")
    envelope = bytes(envelope)
    if len(envelope) > max_bytes:
        raise RecordError("too_large", f"envelope is {len(envelope)} bytes, limit {max_bytes}")
    env, envelope = _load_json(envelope, "envelope")  # from here on, the canonical form
    _expect_keys(env, {"payload", "payloadType", "signatures"}, "envelope", "malformed")
    payload_type = env["payloadType"]
    if not isinstance(payload_type, str):
        raise RecordError("malformed", "payloadType must be a string")
    payload = _b64decode(env["payload"], "payload")
    signer, signature = _single_signature(env["signatures"])
    # Signature first: any tampering with the signed bytes reports as bad_signature.
    if not verify_signature(signer, signature, pae(payload_type, payload)):
        raise RecordError("bad_signature", f"signature does not verify for key {signer}")
    if payload_type != PAYLOAD_TYPE:
        raise RecordError("malformed", f"payloadType must be {PAYLOAD_TYPE!r}, got {payload_type!r}")
    statement = _load_canonical(payload, "statement")
    _expect_keys(statement, {"_type", "subject", "predicateType", "predicate"}, "statement", "malformed")
    if statement["_type"] != STATEMENT_TYPE:
        raise RecordError("malformed", f"_type must be {STATEMENT_TYPE!r}")
    predicate_type = statement["predicateType"]
    if not isinstance(predicate_type, str) or predicate_type not in KIND_BY_TYPE:
        raise RecordError("unknown_predicate", f"unknown predicateType {predicate_type!r}")
    subject_name, subject_digest = _single_subject(statement["subject"])
    predicate = statement["predicate"]
    if not isinstance(predicate, dict):
        raise RecordError("invalid_field", "predicate must be an object")
    kind = KIND_BY_TYPE[predicate_type]
    _VALIDATORS[kind](predicate, subject_name, subject_digest, signer)
    return Record(envelope=envelope, record_id=record_id_of(envelope), predicate_type=predicate_type,
                  kind=kind, subject_name=subject_name, subject_digest=subject_digest,
                  predicate=predicate, signer=signer)


def _load_json(data: bytes, what: str) -> tuple[Any, bytes]:
    """Parse any valid JSON encoding; returns the value and its canonical encoding."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecordError("malformed", f"{what} is not valid JSON: {exc}") from None
    try:
        return obj, canonical_json(obj)
    except (ValueError, RecursionError) as exc:
        raise RecordError("malformed", f"{what} cannot be re-encoded: {exc}") from None


def _load_canonical(data: bytes, what: str) -> Any:
    obj, canonical = _load_json(data, what)
    # The signed statement: one byte form, since its bytes (not its meaning) are what is signed.
    if canonical != data:
        raise RecordError("malformed", f"{what} is not canonical JSON (sorted keys, compact, ASCII)")
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup[:80]!r}")
    return out


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise RecordError("malformed", f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError("malformed", f"{what} is not valid base64: {exc}") from None
    # b64decode ignores stray padding bits; insist on the canonical text so no byte can change silently.
    if base64.b64encode(raw).decode("ascii") != value:
        raise RecordError("malformed", f"{what} is not canonical base64")
    return raw


def _single_signature(signatures: object) -> tuple[str, bytes]:
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise RecordError("malformed", "exactly one signature is required")
    sig = signatures[0]
    _expect_keys(sig, {"keyid", "sig"}, "signature", "malformed")
    keyid = sig["keyid"]
    if not is_digest(keyid):  # same shape as a digest: 64 lowercase hex
        raise RecordError("malformed", "keyid must be the signer's raw Ed25519 public key, lowercase hex")
    return keyid, _b64decode(sig["sig"], "sig")


def _single_subject(subject: object) -> tuple[str, str]:
    if not isinstance(subject, list) or len(subject) != 1:
        raise RecordError("malformed", "exactly one subject is required")
    entry = subject[0]
    _expect_keys(entry, {"name", "digest"}, "subject", "malformed")
    name, digest = entry["name"], entry["digest"]
    _expect_keys(digest, {"sha256"}, "subject digest", "malformed")
    if not isinstance(name, str) or not is_digest(digest["sha256"]):
        raise RecordError("malformed", "subject needs a string name and a lowercase hex sha256 digest")
    return name, digest["sha256"]


def _expect_keys(obj: object, keys: set[str], what: str, reason: str) -> None:
    if not isinstance(obj, dict):
        raise RecordError(reason, f"{what} must be an object")
    if set(obj) != keys:
        missing, extra = sorted(keys - set(obj)), sorted(set(obj) - keys)
        raise RecordError(reason, f"{what} fields wrong: missing {missing}, unexpected {extra}")


# -- field checks (explicit, per kind) --------------------------------------------------------------


def _bad(key: str, why: str) -> RecordError:
    return RecordError("invalid_field", f"{key}: {why}")


def _id(p: Mapping[str, Any], key: str) -> str:
    if not is_valid_id(p[key]):
        raise _bad(key, f"must match {ID_PATTERN.pattern}")
    return p[key]


def _digest(p: Mapping[str, Any], key: str) -> str:
    if not is_digest(p[key]):
        raise _bad(key, "must be a lowercase hex sha256")
    return p[key]


def _nonneg_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _labels(p: Mapping[str, Any], key: str, *, nonempty: bool) -> list[int]:
    value = p[key]
    if not isinstance(value, list) or not all(_nonneg_int(v) for v in value):
        raise _bad(key, "must be a list of non-negative integers")
    if value != sorted(set(value)):
        raise _bad(key, "must be sorted and without duplicates")
    if nonempty and not value:
        raise _bad(key, "must not be empty")
    return value


def _str_list(p: Mapping[str, Any], key: str) -> list[str]:
    value = p[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(key, "must be a list of non-empty strings")
    if len(set(value)) != len(value):
        raise _bad(key, "must not repeat names")
    return value


def _check_lineage(p: dict[str, Any], name: str, digest: str, signer: str) -> None:
    # ``data_digest``: only in records made before issue 14, accepted and ignored (see the module doc).
    keys = LINEAGE_KEYS | ({"data_digest"} if "data_digest" in p else set())
    _expect_keys(p, keys, "lineage predicate", "invalid_field")
    model_id = _id(p, "model_id")
    version = p["version"]
    if not _nonneg_int(version) or version < 1:
        raise _bad("version", "must be an integer >= 1")
    parents = p["parents"]
    if not isinstance(parents, list):
        raise _bad("parents", "must be a list")
    for parent in parents:
        _expect_keys(parent, {"model_id", "digest", "relation"}, "parent", "invalid_field")
        _id(parent, "model_id")
        _digest(parent, "digest")
        if parent["relation"] not in RELATIONS:
            raise _bad("parents.relation", f"must be one of {RELATIONS}")
    parent_ids = [parent["model_id"] for parent in parents]
    if len(set(parent_ids)) != len(parent_ids) or model_id in parent_ids:
        raise _bad("parents", "must be distinct models other than the model itself")
    relation = p["relation"]
    if relation not in (*RELATIONS, ROOT_RELATION) or (relation == ROOT_RELATION) != (not parents):
        raise _bad("relation", f"must be {ROOT_RELATION!r} without parents, else one of {RELATIONS}")
    _labels(p, "labels", nonempty=False)
    _str_list(p, "head_tensors")
    if not isinstance(p["architecture"], dict):
        raise _bad("architecture", "must be an object")
    fishers = p["model_fisher_digests"]
    if not isinstance(fishers, dict) or not all(k and is_digest(v) for k, v in fishers.items()):
        raise _bad("model_fisher_digests", "must map estimator names to lowercase hex sha256")
    if p.get("data_digest") is not None:
        _digest(p, "data_digest")
    if p["previous_digest"] is not None:
        _digest(p, "previous_digest")
    if (version == 1) != (p["previous_digest"] is None):
        raise _bad("previous_digest", "must be null exactly for version 1")
    if name != f"model:{model_id}":
        raise RecordError("subject_mismatch", f"subject {name!r} does not name model {model_id!r}")


def _check_request(p: dict[str, Any], name: str, digest: str, signer: str) -> None:
    _expect_keys(p, {"request_id", "forget_labels", "requester", "settings", "created_at"},
                 "request predicate", "invalid_field")
    request_id = _id(p, "request_id")
    _labels(p, "forget_labels", nonempty=True)
    if p["requester"] != signer:
        raise _bad("requester", "must be the signing key")
    if not isinstance(p["settings"], dict):
        raise _bad("settings", "must be an object")
    created = p["created_at"]
    if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created) \
            or created < 0:
        raise _bad("created_at", "must be a non-negative Unix time")
    if name != f"request:{request_id}" or digest != sha256_hex(request_id.encode("utf-8")):
        raise RecordError("subject_mismatch", f"subject must be request:{request_id} with "
                                              "digest sha256(request_id)")


def _check_announcement(p: dict[str, Any], name: str, digest: str, signer: str) -> None:
    _expect_keys(p, {"request_id", "model_id", "model_digest", "fisher_digest", "shapes", "estimator",
                     "labels"}, "announcement predicate", "invalid_field")
    request_id, model_id = _id(p, "request_id"), _id(p, "model_id")
    _digest(p, "model_digest")
    fisher_digest = _digest(p, "fisher_digest")
    shapes = p["shapes"]
    if not isinstance(shapes, dict) or not shapes or not all(
            k and isinstance(v, list) and all(_nonneg_int(d) for d in v) for k, v in shapes.items()):
        raise _bad("shapes", "must map tensor names to lists of non-negative dimensions")
    if not is_valid_id(p["estimator"]):
        raise _bad("estimator", "must be a non-empty name")
    _labels(p, "labels", nonempty=True)
    if name != f"fisher:{request_id}:{model_id}" or digest != fisher_digest:
        raise RecordError("subject_mismatch", f"subject must be fisher:{request_id}:{model_id} with "
                                              "digest = fisher_digest")


def _check_receipt(p: dict[str, Any], name: str, digest: str, signer: str) -> None:
    # ``state``/``reason``: only in a not_affected receipt; an applied one keeps the shape it had
    # before issue 18, so one meaning has one signed form (and older peers still read it).
    stated = "state" in p or "reason" in p
    _expect_keys(p, RECEIPT_KEYS | ({"state", "reason"} if stated else set()), "receipt predicate",
                 "invalid_field")
    _id(p, "request_id")
    model_id = _id(p, "model_id")
    old_digest = _digest(p, "old_digest")
    new_digest = _digest(p, "new_digest")
    if stated:
        if p["state"] != NOT_AFFECTED:
            raise _bad("state", f"must be {NOT_AFFECTED!r} (an applied receipt has no state field)")
        reason = p["reason"]
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON \
                or not reason.isprintable():
            raise _bad("reason", f"must be a printable text of 1..{MAX_REASON} characters")
        if old_digest != new_digest:
            raise _bad("new_digest", "must equal old_digest: a model that is not affected keeps its version")
    if name != f"model:{model_id}" or digest != new_digest:
        raise RecordError("subject_mismatch", f"subject must be model:{model_id} with digest = new_digest")


def receipt_state(predicate: Mapping[str, Any]) -> str:
    """``applied`` or ``not_affected`` (a receipt without a state, as every one before issue 18, applied)."""
    return predicate.get("state", APPLIED)


_VALIDATORS: dict[str, Callable[[dict[str, Any], str, str, str], None]] = {
    "lineage": _check_lineage, "request": _check_request, "announcement": _check_announcement,
    "receipt": _check_receipt,
}


# -- building ---------------------------------------------------------------------------------------


def sign_statement(identity: Identity, predicate_type: str, subject_name: str, subject_digest: str,
                   predicate: Mapping[str, Any], *, max_bytes: int = MAX_RECORD_BYTES) -> Record:
    """Wrap a statement in a signed envelope and return it parsed, so builders and parser agree."""
    if not is_digest(subject_digest):
        raise RecordError("invalid_field", f"subject digest {subject_digest!r} is not a lowercase hex sha256")
    statement = {"_type": STATEMENT_TYPE, "predicateType": predicate_type, "predicate": dict(predicate),
                 "subject": [{"name": subject_name, "digest": {"sha256": subject_digest}}]}
    try:
        payload = canonical_json(statement)
    except (TypeError, ValueError) as exc:
        raise RecordError("invalid_field", f"predicate is not JSON-serialisable: {exc}") from None
    signature = identity.sign(pae(PAYLOAD_TYPE, payload))
    envelope = canonical_json({
        "payload": base64.b64encode(payload).decode("ascii"), "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": identity.public_key_hex, "sig": base64.b64encode(signature).decode("ascii")}],
    })
    return parse_record(envelope, max_bytes=max_bytes)


def _norm_labels(labels: Iterable[int], key: str) -> list[int]:
    out = set()
    for label in labels:
        if isinstance(label, bool):
            raise _bad(key, "labels are integers, not booleans")
        try:
            out.add(operator.index(label))  # accepts numpy/torch integers, rejects floats
        except TypeError:
            raise _bad(key, f"label {label!r} is not an integer") from None
    return sorted(out)


def build_lineage(identity: Identity, *, model_id: str, model_digest: str, version: int,
                  parents: Iterable[Mapping[str, str]], relation: str, labels: Iterable[int],
                  head_tensors: Iterable[str], architecture: Mapping[str, Any],
                  model_fisher_digests: Mapping[str, str], previous_digest: str | None = None) -> Record:
    """Lineage of one model version. ``parents``: ``{model_id, digest, relation}`` each, ``digest``
    naming the parent *version* the model derived from (records before issue 18: always version 1).

    ``relation`` is ``"root"`` for a model without parents; ``version`` starts at 1, and
    ``previous_digest`` is None exactly for version 1. The owner's training data is not named: its
    digest would let anyone who holds a candidate data set confirm that it is the owner's.
    """
    predicate = {
        "model_id": model_id, "version": version,
        "parents": [{"model_id": p["model_id"], "digest": p["digest"], "relation": p["relation"]}
                    for p in parents],
        "relation": relation, "labels": _norm_labels(labels, "labels"),
        "head_tensors": list(head_tensors), "architecture": dict(architecture),
        "model_fisher_digests": dict(model_fisher_digests), "previous_digest": previous_digest,
    }
    return sign_statement(identity, LINEAGE_V1, f"model:{model_id}", model_digest, predicate)


def build_request(identity: Identity, *, request_id: str, forget_labels: Iterable[int],
                  settings: Mapping[str, Any] | None = None, created_at: float | None = None) -> Record:
    """An unlearning request, signed (and requested) by ``identity``."""
    predicate = {
        "request_id": request_id, "forget_labels": _norm_labels(forget_labels, "forget_labels"),
        "requester": identity.public_key_hex, "settings": dict(settings or {}),
        "created_at": float(time.time() if created_at is None else created_at),
    }
    digest = sha256_hex(request_id.encode("utf-8"))
    return sign_statement(identity, REQUEST_V1, f"request:{request_id}", digest, predicate)


def build_announcement(identity: Identity, *, request_id: str, model_id: str, model_digest: str,
                       fisher_digest: str, shapes: Mapping[str, Iterable[int]], estimator: str,
                       labels: Iterable[int]) -> Record:
    """A discovery node's unlearning-Fisher announcement (the blob itself travels over gRPC)."""
    predicate = {
        "request_id": request_id, "model_id": model_id, "model_digest": model_digest,
        "fisher_digest": fisher_digest,
        "shapes": {name: [operator.index(d) for d in dims] for name, dims in shapes.items()},
        "estimator": estimator, "labels": _norm_labels(labels, "labels"),
    }
    return sign_statement(identity, ANNOUNCEMENT_V1, f"fisher:{request_id}:{model_id}", fisher_digest,
                          predicate)


def build_receipt(identity: Identity, *, request_id: str, model_id: str, old_digest: str,
                  new_digest: str, state: str = APPLIED, reason: str = "") -> Record:
    """A receipt: ``model_id`` applied ``request_id``, moving from ``old_digest`` to ``new_digest``;
    or (``state="not_affected"``, ``new_digest == old_digest``) it is outside the request's effect,
    and ``reason`` says why."""
    predicate = {"request_id": request_id, "model_id": model_id, "old_digest": old_digest,
                 "new_digest": new_digest}
    if state != APPLIED:
        predicate.update(state=state, reason=reason)
    return sign_statement(identity, RECEIPT_V1, f"model:{model_id}", new_digest, predicate)
