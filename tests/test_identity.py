"""Ed25519 identity: key file safety, signatures, and the libp2p key derived from the same seed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from libp2p.peer.id import ID

from fiun_peer.identity import KEY_FILE, Identity, IdentityError, verify_signature


def test_create_writes_private_key_and_public_info(tmp_path: Path) -> None:
    home = tmp_path / "peer"
    identity = Identity.create(home, "alice")
    key = home / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    info = json.loads((home / "identity.json").read_text())
    assert info == {"name": "alice", "public_key": identity.public_key_hex}
    assert len(bytes.fromhex(identity.public_key_hex)) == 32
    assert not [p.name for p in home.iterdir() if p.name.endswith(".tmp")]


def test_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.create(tmp_path, "bob")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    first = Identity.create(tmp_path, "alice")
    with pytest.raises(IdentityError, match="already exists"):
        Identity.create(tmp_path, "mallory")
    assert Identity.load(tmp_path).public_key_hex == first.public_key_hex


def test_load_round_trips(tmp_path: Path) -> None:
    created = Identity.create(tmp_path, "alice")
    loaded = Identity.load(tmp_path)
    assert (loaded.name, loaded.public_key_hex, loaded.peer_id) == \
        (created.name, created.public_key_hex, created.peer_id)
    assert loaded.sign(b"x") == created.sign(b"x")  # Ed25519 is deterministic


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_load_refuses_readable_key(tmp_path: Path, mode: int) -> None:
    Identity.create(tmp_path, "alice")
    os.chmod(tmp_path / KEY_FILE, mode)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(tmp_path)


def test_load_missing_and_inconsistent(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="init"):
        Identity.load(tmp_path)
    Identity.create(tmp_path, "alice")
    info = tmp_path / "identity.json"
    info.write_text(json.dumps({"name": "alice", "public_key": "00" * 32}))
    with pytest.raises(IdentityError, match="public key"):
        Identity.load(tmp_path)


def test_sign_and_verify() -> None:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    sig = alice.sign(b"payload")
    assert len(sig) == 64
    assert verify_signature(alice.public_key_hex, sig, b"payload")
    assert not verify_signature(alice.public_key_hex, sig, b"payloaD")
    assert not verify_signature(bob.public_key_hex, sig, b"payload")
    assert not verify_signature("zz" * 32, sig, b"payload")
    assert not verify_signature(alice.public_key_hex[:-2], sig, b"payload")
    assert not verify_signature(alice.public_key_hex, sig[:-1], b"payload")


def test_libp2p_key_comes_from_the_same_seed() -> None:
    identity = Identity.from_seed(bytes(range(32)), "alice")
    pair = identity.libp2p_keypair()
    assert pair.public_key.to_bytes().hex() == identity.public_key_hex
    # A libp2p signature verifies with our verify function, and vice versa.
    assert verify_signature(identity.public_key_hex, pair.private_key.sign(b"m"), b"m")
    assert pair.public_key.verify(b"m", identity.sign(b"m"))
    assert identity.peer_id == ID.from_pubkey(pair.public_key).to_base58()
    assert identity.peer_id.startswith("12D3KooW")  # identity-multihash Ed25519 peer id
    assert Identity.generate("x").peer_id != identity.peer_id


def test_seed_length_is_checked() -> None:
    with pytest.raises(IdentityError):
        Identity.from_seed(b"short", "x")
