"""The signed-call check behind ``--allow-peers``: which headers pass, and why the others do not.
(Real processes: tests/test_privacy.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from fiun_peer.cli import peer_main
from fiun_peer.identity import Identity
from fiun_peer.rpc.peer_auth import MAX_SKEW, AllowList, AllowListError, PeerAuth, key_of_peer_id, sign_call

MEMBER, OTHER, ME = Identity.generate("member"), Identity.generate("other"), Identity.generate("me")
METHOD = "/fiun.v1.FisherService/Fetch"
BODY = b"\n@" + b"0" * 64


def digest(body: bytes = BODY) -> bytes:
    return hashlib.sha256(body).digest()


def auth(clock: float = 1_000_000.0) -> PeerAuth:
    return PeerAuth(AllowList.of([MEMBER.public_key_hex]), own_key=ME.public_key_hex, clock=lambda: clock)


def code(result) -> grpc.StatusCode | None:
    return None if result is None else result[0]


def test_allow_list_takes_keys_and_peer_ids(tmp_path: Path) -> None:
    path = tmp_path / "allow"
    path.write_text(f"# the members\n{MEMBER.public_key_hex.upper()}\n\n{OTHER.peer_id}   # bob\n")
    assert AllowList.from_file(path).keys == {MEMBER.public_key_hex, OTHER.public_key_hex}
    assert key_of_peer_id(ME.peer_id) == ME.public_key_hex
    path.write_text("not-a-key\n")
    with pytest.raises(AllowListError, match="not a libp2p peer id"):
        AllowList.from_file(path)
    with pytest.raises(AllowListError, match="cannot read"):
        AllowList.from_file(tmp_path / "missing")


def test_a_listed_key_passes_once_per_signed_call() -> None:
    a = auth()
    header = sign_call(MEMBER, METHOD, BODY, now=1_000_000.0)
    assert a.check(header, METHOD, digest()) is None
    assert code(a.check(header, METHOD, digest())) == grpc.StatusCode.UNAUTHENTICATED      # replayed
    assert a.check(sign_call(ME, METHOD, BODY, now=1_000_000.0), METHOD, digest()) is None  # our own key


def test_refusals() -> None:
    a = auth()
    now = 1_000_000.0
    unauth = grpc.StatusCode.UNAUTHENTICATED
    assert code(a.check(None, METHOD, digest())) == unauth                                   # no header
    assert code(a.check("v1 x", METHOD, digest())) == unauth                                 # malformed
    assert code(a.check(sign_call(MEMBER, METHOD, BODY, now=now), METHOD, digest(b"other"))) == unauth
    assert code(a.check(sign_call(MEMBER, "/fiun.v1.RecordService/Sync", BODY, now=now), METHOD, digest())) == unauth
    stale = sign_call(MEMBER, METHOD, BODY, now=now - MAX_SKEW - 1)
    assert code(a.check(stale, METHOD, digest())) == unauth
    forged = sign_call(OTHER, METHOD, BODY, now=now).replace(OTHER.public_key_hex, MEMBER.public_key_hex)
    assert code(a.check(forged, METHOD, digest())) == unauth                                 # not MEMBER's signature
    status, message = a.check(sign_call(OTHER, METHOD, BODY, now=now), METHOD, digest())
    assert status == grpc.StatusCode.PERMISSION_DENIED and "allow list" in message           # valid, not listed


def test_run_refuses_an_unusable_allow_list(tmp_path: Path, capsys) -> None:
    home = tmp_path / "p"
    assert peer_main(["init", "--home", str(home), "--name", "p"]) == 0
    bad = tmp_path / "allow"
    bad.write_text("12D3KooWnotapeer\n")
    assert peer_main(["run", "--home", str(home), "--allow-peers", str(bad)]) == 2
    assert "allow" in capsys.readouterr().err
    assert not (home / "store.sqlite").exists()                    # refused before anything was opened
