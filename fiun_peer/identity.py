"""Ed25519 identity of one peer: the key that signs its records and, from the same seed, its libp2p key.

One 32-byte seed in ``home/identity.key`` (mode 0600) is the whole secret. Records name their signer
by the raw public key in hex; libp2p derives the peer id from the same key, so a peer's gossip
identity and its signing identity cannot drift apart.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from fiun_peer.files import fsync_dir, write_atomic

KEY_FILE = "identity.key"
INFO_FILE = "identity.json"
SEED_BYTES = 32


class IdentityError(Exception):
    """The identity files are missing, unsafe or inconsistent."""


@dataclass(frozen=True)
class Identity:
    """A peer's signing key. Build with :meth:`create`, :meth:`load` or :meth:`from_seed`."""

    name: str
    _seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self._seed) != SEED_BYTES:
            raise IdentityError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(self._seed)}")

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_seed(cls, seed: bytes, name: str) -> Identity:
        """An in-memory identity (tests, simulations); nothing is written."""
        return cls(name=name, _seed=bytes(seed))

    @classmethod
    def generate(cls, name: str) -> Identity:
        """A fresh random in-memory identity."""
        return cls.from_seed(secrets.token_bytes(SEED_BYTES), name)

    @classmethod
    def create(cls, home: Path, name: str, seed: bytes | None = None) -> Identity:
        """Create a new identity in ``home`` (from ``seed``, e.g. a key kept in a Kubernetes Secret;
        default: a fresh random one); refuses to replace an existing key."""
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        key_path = home / KEY_FILE
        if key_path.exists():
            raise IdentityError(f"{key_path} already exists; refusing to overwrite an identity key")
        identity = cls.generate(name) if seed is None else cls.from_seed(seed, name)
        _write_secret_no_clobber(key_path, identity._seed)
        info = {"name": name, "public_key": identity.public_key_hex}
        write_atomic(home / INFO_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
        return identity

    @classmethod
    def load(cls, home: Path) -> Identity:
        """Load the identity in ``home``; refuses a key file readable by group or others."""
        home = Path(home)
        key_path, info_path = home / KEY_FILE, home / INFO_FILE
        try:
            mode = key_path.stat().st_mode
        except FileNotFoundError:
            raise IdentityError(f"no identity key at {key_path}; run `fiun-peer init` first") from None
        if mode & 0o077:
            raise IdentityError(
                f"{key_path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {key_path}"
            )
        seed = key_path.read_bytes()
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"{key_path} holds {len(seed)} bytes, expected a {SEED_BYTES}-byte seed")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            name, public_key = info["name"], info["public_key"]
        except FileNotFoundError:
            raise IdentityError(f"missing {info_path}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{info_path} is not a valid identity file: {exc}") from None
        identity = cls.from_seed(seed, str(name))
        if public_key != identity.public_key_hex:
            raise IdentityError(f"{info_path} names public key {public_key}, but the key file holds "
                                f"{identity.public_key_hex}")
        return identity

    # -- use ------------------------------------------------------------------------------------------

    @cached_property  # cached_property writes __dict__ directly, so it works on a frozen dataclass
    def _private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self._seed)

    @cached_property
    def public_key_hex(self) -> str:
        """Raw 32-byte Ed25519 public key, lowercase hex: the keyid of this peer's records."""
        raw = self._private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return raw.hex()

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``."""
        return self._private_key.sign(data)

    def libp2p_keypair(self) -> KeyPair:
        """py-libp2p Ed25519 key pair from the same seed (so the peer id matches the record signer)."""
        return create_new_key_pair(self._seed)

    @cached_property
    def peer_id(self) -> str:
        """libp2p peer id (base58, ``12D3KooW...``) of :meth:`libp2p_keypair`."""
        return ID.from_pubkey(self.libp2p_keypair().public_key).to_base58()


def verify_signature(public_key_hex: str, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` by that raw public key."""
    try:
        raw = bytes.fromhex(public_key_hex)
        if len(raw) != SEED_BYTES:
            return False
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_secret_no_clobber(path: Path, data: bytes) -> None:
    # The temp file is born 0600 (O_EXCL, mode at open), so the seed is never world-readable; link()
    # then publishes it atomically and fails if a key appeared meanwhile, so nothing is overwritten.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case a umask or ACL default left more bits
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite an identity key") from None
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
