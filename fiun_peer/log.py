"""Structured logs: one line per event, human-readable key=value or JSON (``--log-json``)."""

from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool, name: str) -> None:
        super().__init__()
        self.as_json, self.peer = as_json, name

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STD}
        base = {"ts": round(record.created, 3), "level": record.levelname.lower(), "peer": self.peer,
                "msg": record.getMessage(), **fields}
        if record.exc_info:
            base["error"] = self.formatException(record.exc_info).splitlines()[-1]
        if self.as_json:
            return json.dumps(base, default=str)
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in base.items() if k not in ("ts", "level", "peer", "msg"))
        return f"{ts} {record.levelname:<7} [{self.peer}] {base['msg']} {extra}".rstrip()


def setup(*, name: str, as_json: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json, name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # libp2p logs every failed bootstrap dial at ERROR and its auto-connector at INFO: keep our events readable.
    for noisy in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
