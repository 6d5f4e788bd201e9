"""Named fault-injection points (failpoints, after etcd's gofail) for crash-safety tests.

Code marks the steps where a crash matters with ``faults.point("after_pull")``. Nothing happens
unless the process was started with ``FIUN_FAILPOINTS`` set, e.g.::

    FIUN_FAILPOINTS="after_pull=kill"                    SIGKILL ourselves at the first hit
    FIUN_FAILPOINTS="mid_write=2*off->kill"              pass twice, kill at the third hit
    FIUN_FAILPOINTS="after_new_blob=sleep(0.5);before_receipt=30%kill"
    FIUN_FAILPOINTS="mid_write=kill@after_pull"          kill at the first blob write after the pull

A spec is ``name=term[->term...]`` separated by ``;``. A term is ``[P%][N*]action`` with action
``off`` (do nothing), ``kill`` (SIGKILL this process: no cleanup, no flush, like a power cut),
``sleep(S)`` or ``sleep:S`` (block S seconds, to widen a window for an outside kill) or ``raise``
(raise :class:`FailpointFired`). ``N*`` makes a term apply to N hits, then the next term takes
over (a term without a count applies forever; after a last counted term the point is off).
``P%`` makes a term fire with probability P, otherwise the hit passes. ``@OTHER`` after the terms
arms a point only once point OTHER has been reached in this process (hits before do not count).
Unset, :func:`point` is one global check: free in production.

Before a kill the point writes one line to stderr (``failpoint NAME fired: kill [detail]``) so a
test can tell from the peer log where the process died.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

ENV = "FIUN_FAILPOINTS"
_TERM = re.compile(r"(?:(?P<pct>\d+(?:\.\d+)?)%)?(?:(?P<count>\d+)\*)?"
                   r"(?P<action>off|kill|raise|sleep(?:\((?P<a1>[0-9.]+)\)|:(?P<a2>[0-9.]+)))")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class FailpointError(ValueError):
    """A malformed ``FIUN_FAILPOINTS`` spec."""


class FailpointFired(RuntimeError):
    """Raised by a point whose action is ``raise``."""


@dataclass
class _Term:
    action: str
    seconds: float = 0.0
    count: int | None = None     # hits this term still covers; None: all remaining hits
    probability: float = 1.0


@dataclass
class _Point:
    terms: list[_Term] = field(default_factory=list)
    after: str = ""              # armed only once this other point has been reached


def parse(spec: str) -> dict[str, _Point]:
    """``"a=kill;b=2*off->sleep(0.1)@a"`` -> the points it configures; raises FailpointError."""
    out: dict[str, _Point] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, body = part.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise FailpointError(f"{ENV}: expected NAME=TERM in {part!r} (NAME like after_pull)")
        body, _, after = body.partition("@")
        after = after.strip()
        if after and (not _NAME.fullmatch(after) or after == name):
            raise FailpointError(f"{ENV}: {name}=...@{after}: expected the name of another point after @")
        terms = []
        for text in body.split("->"):
            m = _TERM.fullmatch(text.strip())
            if m is None:
                raise FailpointError(f"{ENV}: bad term {text.strip()!r} for {name}; expected [P%][N*]ACTION "
                                     f"with ACTION one of off, kill, raise, sleep(SECONDS)")
            pct = float(m["pct"]) if m["pct"] else 100.0
            if not 0 <= pct <= 100:
                raise FailpointError(f"{ENV}: probability {pct}% for {name} is not within 0..100")
            action = m["action"].split("(")[0].split(":")[0]
            terms.append(_Term(action, float(m["a1"] or m["a2"] or 0.0),
                               int(m["count"]) if m["count"] else None, pct / 100.0))
        out[name] = _Point(terms, after)
    for point_ in list(out.values()):
        if point_.after:
            out.setdefault(point_.after, _Point())   # reached-or-not must be counted
    return out


_lock = threading.Lock()
_active: dict[str, _Point] = parse(os.environ.get(ENV, ""))
_hits: dict[str, int] = {}


def configure(spec: str) -> None:
    """Replace the active failpoints (tests in this process; peers read ``FIUN_FAILPOINTS``)."""
    global _active
    points = parse(spec)
    with _lock:
        _active = points
        _hits.clear()


def hits(name: str) -> int:
    """How often an active point was reached (once armed) in this process."""
    return _hits.get(name, 0)


def point(name: str, detail: str = "") -> None:
    """A named step. No-op unless ``name`` is configured."""
    if _active and name in _active:
        _fire(name, detail)


def _fire(name: str, detail: str) -> None:
    with _lock:
        p = _active[name]
        if p.after and not _hits.get(p.after):
            return
        _hits[name] = _hits.get(name, 0) + 1
        if not p.terms:
            return
        term = p.terms[0]
        if term.count is not None:
            term.count -= 1
            if term.count <= 0:
                p.terms.pop(0)   # used up: the next term (or nothing: the point is off) takes over
        if term.probability < 1.0 and random.random() >= term.probability:
            return
        action, seconds = term.action, term.seconds
    if action == "off":
        return
    if action == "sleep":
        time.sleep(seconds)
        return
    sys.stderr.write(f"failpoint {name} fired: {action}{' ' + detail if detail else ''}\n")
    sys.stderr.flush()
    if action == "raise":
        raise FailpointFired(f"failpoint {name}")
    os.kill(os.getpid(), signal.SIGKILL)
