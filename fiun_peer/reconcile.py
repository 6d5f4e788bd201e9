"""The reconcile state machine: what this peer does about each request for each model it owns.

One idempotent pass (:meth:`Reconciler.reconcile`) looks at the stored records (the ledger) and this
peer's own state (``fiun_peer.state``) and advances every (request, own model) pair one step:

    pending -> [discovery model: announce its unlearning Fisher, Eq. 3]
            -> every discovery ancestor's Fisher announced, pulled and checked
            -> applied (merge, Eq. 5; dampen, Eq. 6; a new version)  -> lineage record + receipt
    or      -> not_affected (it descends from the data only through versions that had applied the
               request already, issue 18)                           -> receipt

Any record arriving, a timer, or a restart triggers a pass, so a crash at any point is repaired by
simply running it again (docs/architecture.md). Owns the pairs already settled, the trigger and the
limit on Fisher pulls in flight. All arithmetic is ``fiun_peer.core`` (via ``fiun_peer.unlearn``);
this module only decides *when* to call it and moves bytes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

import torch
import trio

from . import faults, state
from .bridge import run_in_worker
from .core.fiun import FIUnSettings, SettingsError
from .formats import versions
from .identity import Identity
from .ledger import Ledger
from .own_models import OwnModels
from .progress import why_not_affected
from .records import (
    APPLIED,
    NOT_AFFECTED,
    Record,
    build_announcement,
    build_lineage,
    build_receipt,
)
from .state import RequestState
from .tensors import TensorFileError, from_bytes, load_dataset_bytes, to_bytes
from .unlearn import apply_fiun_head, fisher_problem, node_unlearning_fisher

log = logging.getLogger("fiun_peer.agent")
#: Fisher pulls in flight at once for one model (an aggregate pulls one per discovery ancestor). On a
#: loaded machine a pull mostly waits to be scheduled at both ends, so waves of pulls cost latency.
PULL_PARALLEL = 16

Fishers = dict[str, torch.Tensor]


class Reconciler:
    """Drives this peer's side of every request. Call it on the trio thread only.

    ``publish(record)`` stores and sends one of our records; ``pull(announcement)`` fetches the
    bytes of an announced Fisher from the peers (None and why when none gave them);
    ``waiting_for(models)`` says why their Fisher announcements are awaited. ``on_applied(apply
    seconds, seconds since the request was received)`` is the metrics hook."""

    def __init__(self, identity: Identity, ledger: Ledger, models: OwnModels, *,
                 publish: Callable[[Record], Awaitable[None]],
                 pull: Callable[[Record], Awaitable[tuple[bytes | None, str]]],
                 waiting_for: Callable[[list[str]], str]) -> None:
        self.identity, self._ledger, self._models, self.store = identity, ledger, models, ledger.store
        self._publish, self._pull, self._waiting_for = publish, pull, waiting_for
        self._pull_slots = trio.CapacityLimiter(PULL_PARALLEL)
        self._kick = trio.Event()
        self._work_lock = trio.Lock()
        # (request id, own model) with nothing left to do, skipped by reconcile: without it every
        # pass re-read the state of every request this peer ever saw (1,000 of them: 24 ms a pass).
        self._settled: set[tuple[str, str]] = set()
        self.on_applied: Callable[[float, float], None] | None = None

    def kick(self) -> None:
        """Run a pass soon (something changed)."""
        self._kick.set()

    async def run(self, *, interval: float = 2.0,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A pass when kicked, and at least every ``interval`` seconds, until cancelled."""
        task_status.started()
        while True:
            with trio.move_on_after(interval):
                await self._kick.wait()
            self._kick = trio.Event()
            try:
                await self.reconcile()
            except Exception:  # keep serving; the next pass retries
                log.exception("reconcile failed", extra={"event": "reconcile_failed"})

    async def reconcile(self) -> None:
        async with self._work_lock:
            requests = self._ledger.requests()
            if not requests:  # leave the view alone: every new model drops it, and a rebuild per
                return        # pass made 64 arriving lineage records cost 10x the CPU
            owned = self._ledger.view.owned_by(self.identity.public_key_hex)
            for req in requests:
                for m in owned:
                    if (req.predicate["request_id"], m) not in self._settled:
                        await self._advance(req, m)

    async def _advance(self, req: Record, m: str) -> None:
        rid, cf = req.predicate["request_id"], req.predicate["forget_labels"]
        st = state.request(self.store, rid, m)
        if st and st.get("state") in (APPLIED, NOT_AFFECTED):
            if not self._ledger.has_own("receipt", rid, m):   # crashed before the receipt went out
                await self._send_receipt(rid, m, st)
            self._settled.add((rid, m))
            return
        g = self._ledger.view.umig
        if m not in g.unlearning_subgraph(cf):
            # For good: a model's parents and every ancestor's labels are fixed by their first versions.
            self._settled.add((rid, m))
            return
        if m not in g.unlearning_subgraph(cf, rid):
            # Descends from the data only through versions that had applied this request already: it
            # says so in a receipt, so the request completes and the requester sees why. For good
            # too: the versions its edges name, and what each had applied, never change.
            await self._not_affected(rid, m, cf, st)
            return
        try:
            s = FIUnSettings.from_dict(req.predicate["settings"])
        except SettingsError as exc:
            self._set_why(rid, m, st, f"request has invalid settings: {exc}")
            return
        if st is None:
            st = {"state": "pending", "base": state.model(self.store, m)["digest"], "received_at": time.time()}
            state.put_request(self.store, rid, m, st)
            log.info("request received", extra={"event": "request_received", "request": rid, "model": m})
        lineage = self._ledger.view.first[m]
        if m in g.discovery_nodes(cf) and not self._ledger.has_own("announcement", rid, m):
            await self._announce(rid, m, cf, st["base"], lineage, s)
            return
        announced = self._ledger.by("announcement", rid)
        anc = g.discovery_ancestors(m, cf, rid)
        missing = [d for d in anc if d not in announced]
        if missing:
            self._set_why(rid, m, st, self._waiting_for(missing))
            return
        fishers = await self._pull_all(rid, m, st, [announced[d] for d in anc])
        if fishers is None or not await self._usable(rid, m, st, [announced[d] for d in anc], fishers, s):
            return
        faults.point("after_pull", f"{rid}:{m}")
        await self._apply(rid, m, st, lineage, fishers, s, cf)

    def _set_why(self, rid: str, m: str, st: RequestState | None, why: str) -> None:
        st = RequestState(**(st or {"state": "pending", "received_at": time.time()}))
        if st.get("why") != why:
            st["why"] = why
            state.put_request(self.store, rid, m, st)

    async def _announce(self, rid: str, m: str, cf: list[int], base: str, lineage: Record,
                        s: FIUnSettings) -> None:
        """Discovery node: Eq. 3 on our own forget data, stored content-addressed, announced."""
        model = await run_in_worker(self._models.load, lineage, base)
        x, y = load_dataset_bytes(self.store.get_blob(self._models.data_digest(m)))
        t0 = time.perf_counter()
        fhat = await run_in_worker(node_unlearning_fisher, model, x, y, cf, s)
        digest = self.store.put_blob(to_bytes(fhat), kind="fisher")  # served once announced
        rec = build_announcement(self.identity, request_id=rid, model_id=m, model_digest=base,
                                 fisher_digest=digest, shapes={k: list(v.shape) for k, v in fhat.items()},
                                 estimator=s.estimator, labels=sorted(set(cf) & set(lineage.predicate["labels"])))
        faults.point("before_announce", f"{rid}:{m}")
        await self._publish(rec)
        log.info("fisher announced", extra={"event": "fisher_announced", "request": rid, "model": m,
                                            "digest": digest, "seconds": round(time.perf_counter() - t0, 4)})

    # -- the Fishers of the discovery ancestors -----------------------------------------------
    async def _pull_all(self, rid: str, m: str, st: RequestState, announcements: list[Record]) -> list[Fishers] | None:
        """Every announced Fisher, in ``announcements`` order; None (and why, in the state) when one
        cannot be had yet."""
        # All at once: an aggregate (FL's global model) descends from every client, and one pull
        # after another would put N round trips on the request's critical path. Merged in
        # announcement order, whatever order they arrive in.
        got: dict[int, tuple[Fishers | None, str]] = {}

        async def pull(i: int) -> None:
            async with self._pull_slots:
                got[i] = await self._get_fisher(announcements[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(announcements)):
                nursery.start_soon(pull, i)
        fishers = []
        for i in range(len(announcements)):
            blob, why = got[i]
            if blob is None:
                self._set_why(rid, m, st, why)
                return None
            fishers.append(blob)
        return fishers

    async def _get_fisher(self, ann: Record) -> tuple[Fishers | None, str]:
        """The announced Fisher, from our store or pulled from any peer that has it (digest verified)."""
        digest = ann.predicate["fisher_digest"]
        data = self.store.get_blob(digest) if self.store.has_blob(digest) and self.store.verify_blob(digest) else None
        if data is None:
            data, why = await self._pull(ann)
            if data is None:
                return None, why
            self.store.put_blob(data, kind="fisher")
            self.store.incr("fisher_bytes_pulled", len(data))
        try:
            fisher = from_bytes(data, what="Fisher")
        except TensorFileError as exc:
            return None, str(exc)
        shapes = {k: list(v.shape) for k, v in fisher.items()}
        if shapes != ann.predicate["shapes"]:
            return None, f"Fisher of {ann.predicate['model_id']} has shapes {shapes}, announced {ann.predicate['shapes']}"
        return fisher, ""

    async def _usable(self, rid: str, m: str, st: RequestState, announcements: list[Record],
                      fishers: list[Fishers], s: FIUnSettings) -> bool:
        """Check every pulled Fisher against our own head *before* any arithmetic: a hostile or
        broken discovery peer can announce a well-formed blob of the wrong shape, dtype or sign."""
        own = await self._models.model_fisher(m, state.model(self.store, m)["digest"], s)
        for ann, fisher in zip(announcements, fishers, strict=True):
            problem = fisher_problem(fisher, own)
            if problem:
                d, digest = ann.predicate["model_id"], ann.predicate["fisher_digest"]
                why = (f"Fisher of {d} ({digest[:12]}, announced by {ann.signer[:16]}...) "
                       f"is unusable: {problem}; model {m} left untouched")
                counted = st.get("fisher_invalid", [])
                if digest in counted:  # counted and logged once per (request, model, Fisher)
                    self._set_why(rid, m, st, why)
                    return False
                with self.store.transaction():
                    self.store.incr("fisher_invalid")
                    state.put_request(self.store, rid, m, {**st, "why": why, "fisher_invalid": [*counted, digest]})
                log.warning("fisher refused", extra={"event": "fisher_invalid", "request": rid, "model": d,
                                                     "signer": ann.signer, "detail": problem})
                return False
        return True

    # -- settling a pair ----------------------------------------------------------------------
    async def _apply(self, rid: str, m: str, st: RequestState, lineage: Record, fishers: list[Fishers],
                     s: FIUnSettings, cf: list[int]) -> None:
        """Eqs. 5-6 on our model, the new version written atomically, then a receipt."""
        # The current version, not st["base"]: a request applied since this one arrived must not be undone.
        base = state.model(self.store, m)["digest"]
        t0 = time.perf_counter()
        model = await run_in_worker(self._models.load, lineage, base, True)   # it gets the new head
        mf = await self._models.model_fisher(m, base, s)
        try:
            new_head = await run_in_worker(functools.partial(apply_fiun_head, forget_labels=cf), model, mf, fishers, s)
        except ValueError as exc:  # e.g. a Fisher of the wrong shape or with NaN: model untouched
            self._set_why(rid, m, st, f"cannot apply: {exc}")
            self.store.incr("apply_failed")
            return
        # Head-only: the new head and a manifest are stored, the digest is the whole artifact's.
        new = await run_in_worker(versions.new_version, model, new_head)
        versions.record(self.store, m, new)
        new_digest = new.digest
        self._models.keep(m, new_digest, model)   # the next request starts from it
        faults.point("after_new_blob", f"{rid}:{m}")
        model_state = state.model(self.store, m)
        version = model_state["version"] + 1
        now = time.time()
        done: RequestState = {**st, "state": APPLIED, "old": base, "new": new_digest, "version": version,
                              "applied_at": now, "why": ""}
        with self.store.transaction():  # model version and request state move together, or not at all
            state.put_model(self.store, m, {**model_state, "digest": new_digest, "version": version})
            faults.point("apply_mid_txn", f"{rid}:{m}")
            state.put_request(self.store, rid, m, done)
        log.info("unlearning applied", extra={"event": "applied", "request": rid, "model": m,
                                              "old": base, "new": new_digest})
        if self.on_applied is not None:
            self.on_applied(time.perf_counter() - t0, now - st.get("received_at", now))
        faults.point("before_receipt", f"{rid}:{m}")
        await self._send_receipt(rid, m, done)

    async def _not_affected(self, rid: str, m: str, cf: list[int], st: RequestState | None) -> None:
        """Model ``m`` is outside request ``rid`` (see ``_advance``): record it and say so, signed."""
        digest = state.model(self.store, m)["digest"]
        reason = why_not_affected(self._ledger.view, m, cf, rid)
        st = {**(st or {"received_at": time.time()}), "state": NOT_AFFECTED, "old": digest, "new": digest,
              "reason": reason, "why": ""}
        state.put_request(self.store, rid, m, st)
        log.info("not affected", extra={"event": "not_affected", "request": rid, "model": m, "detail": reason})
        await self._send_receipt(rid, m, st)
        self._settled.add((rid, m))

    async def _send_receipt(self, rid: str, m: str, st: RequestState) -> None:
        """The receipt for a settled (request, model) pair, from its stored state; after applying,
        the new version's lineage record first (it carries no model Fisher: that of a later version
        is computed when a request needs it, see ``OwnModels.model_fisher``)."""
        if st["state"] == NOT_AFFECTED:
            await self._publish(build_receipt(self.identity, request_id=rid, model_id=m, old_digest=st["old"],
                                              new_digest=st["new"], state=NOT_AFFECTED, reason=st["reason"]))
            return
        first = self._ledger.view.first[m].predicate
        receipt = build_receipt(self.identity, request_id=rid, model_id=m, old_digest=st["old"], new_digest=st["new"])
        lineage = build_lineage(self.identity, model_id=m, model_digest=st["new"], version=st["version"],
                                parents=first["parents"], relation=first["relation"], labels=first["labels"],
                                head_tensors=first["head_tensors"], architecture=first["architecture"],
                                model_fisher_digests={}, previous_digest=st["old"])
        await self._publish(lineage)
        faults.point("after_lineage", f"{rid}:{m}")
        await self._publish(receipt)
