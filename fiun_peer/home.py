"""Where a peer's home is, and the lock that keeps one daemon per home.

``--home`` (or ``$FIUN_HOME``) takes a path, or a bare name: ``alice`` is ``~/.fiun/alice``, so homes
(private keys included) land outside the working tree unless asked for (``./alice``). The lock is
an ``fcntl.flock`` on ``HOME/daemon.lock``, held for as long as the daemon runs; the kernel drops it
when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path

HOME_ENV = "FIUN_HOME"
HOMES_DIR = Path("~/.fiun")
LOCK_FILE = "daemon.lock"
RUN_FILE = "run.json"


class HomeError(Exception):
    """The home is missing, or another daemon holds it."""


def home_path(text: str) -> Path:
    """``--home`` as a path: a bare NAME (no ``/``) is ``~/.fiun/NAME``; anything else is a path."""
    text = str(text).strip()
    if not text:
        raise argparse.ArgumentTypeError("the home must not be empty")
    if "/" not in text and text not in (".", "..") and not text.startswith("~"):
        return (HOMES_DIR / text).expanduser()
    return Path(text).expanduser()


def home_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """``$FIUN_HOME`` resolved like ``--home``, or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(HOME_ENV, "").strip()
    return home_path(value) if value else None


class HomeLock:
    """An exclusive lock on a home for this process; :meth:`release` (or exit) frees it."""

    def __init__(self, home: Path, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Path) -> HomeLock:
        home = Path(home)
        if not home.is_dir():
            raise HomeError(f"no peer home at {home}; create it with: fiun-peer init --home {home} --name NAME")
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
            os.close(fd)
            raise HomeError(f"{home} is in use by pid {holder or '(unknown)'}: another fiun-peer run "
                            "serves this home; stop it first, or use another --home") from None
        except BaseException:
            os.close(fd)
            raise
        # The pid is only for the message above; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(home, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_run_file(home: Path, pid: int | None = None) -> bool:
    """Remove ``HOME/run.json`` only if it names this process (``pid``, default ours): another
    daemon's file (or one this process cannot read) is left alone. True when removed."""
    path = Path(home) / RUN_FILE
    pid = os.getpid() if pid is None else pid
    try:
        owner = json.loads(path.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return False
    if owner != pid:
        return False
    path.unlink(missing_ok=True)
    return True


def write_new_secret(path: Path, data: bytes, *, what: str) -> None:
    """Write a secret file born 0600 (O_EXCL: never over an existing one, never readable by others
    even for a moment)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise HomeError(f"{path} already exists; refusing to overwrite an {what}") from None
    try:
        os.fchmod(fd, 0o600)  # in case a umask or default ACL left more bits
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
