"""The agent's errors, as the admin API tells them apart (docs/architecture.md).

A caller's mistake (:class:`AgentError`), a call this peer cannot take *yet* (:class:`NotReady`) and
something this peer does not hold (:class:`NotFound`) become INVALID_ARGUMENT, FAILED_PRECONDITION
and NOT_FOUND there. Importable from ``fiun_peer.agent`` too.
"""

from __future__ import annotations


class AgentError(ValueError):
    """A caller's mistake (bad argument); the admin API maps it to INVALID_ARGUMENT."""


class NotFound(LookupError):
    """A request, model or version this peer does not know or own; the admin API's NOT_FOUND."""


class NotReady(AgentError):
    """A well-formed call that this peer's view of the network cannot take yet (a parent whose
    lineage has not arrived, labels no model holds); the admin API maps it to FAILED_PRECONDITION,
    so a client knows that waiting (or ``--force``) may change the answer and fixing the input won't."""
