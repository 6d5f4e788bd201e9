"""Live status of a `fiun-sim network` run on stderr: one rewritten line on a terminal, plain lines
(only when something changed) otherwise, nothing with ``--quiet``."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class NetworkProgress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._t0 = time.monotonic()
        self._counts: dict[str, tuple[int, int]] = {}
        self._phase = ""

    def phase(self, text: str) -> None:
        """A new stage of the run (training, starting peers, publishing, unlearning, checking)."""
        self._phase, self._counts = text, {}
        self._show()

    def count(self, what: str, done: int, total: int, *, show: bool = True) -> None:
        """Update one counter of the current phase, e.g. ``count("peers up", 3, 8)``."""
        if self._counts.get(what) != (done, total):
            self._counts[what] = (done, total)
            if show:
                self._show()

    def trained(self, node: str) -> None:
        done, total = self._counts.get("models trained", (0, 0))
        self.count("models trained", done + 1, total)

    def request(self, reply) -> None:
        """A GetRequest reply: how many discovery Fishers are announced and receipts are in."""
        disc = [m for m in reply.models if m.discovery]
        self.count("Fishers announced", sum(m.state in ("announced", "applied") for m in disc), len(disc),
                   show=False)
        self.count("receipts", sum(m.state == "applied" for m in reply.models), len(reply.models))

    def line(self, text: str) -> None:
        """A message that stays (e.g. a warning), printed above the status line."""
        if self.enabled:
            self._clear()
            print(text, file=self.stream, flush=True)
            self._last = ""
            self._show()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._clear()

    def _text(self) -> str:
        parts = [f"{what} {d}/{t}" if t else f"{what} {d}" for what, (d, t) in self._counts.items()]
        return f"[{time.monotonic() - self._t0:6.1f}s] {self._phase}" + (": " + ", ".join(parts) if parts else "")

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")

    def _show(self) -> None:
        if not self.enabled:
            return
        text = self._text()
        key = text.split("] ", 1)[1]
        if key == self._last:
            return
        self._last = key
        if self.tty:
            self.stream.write("\r\x1b[K" + text[: 200])
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)
