"""The Unified Model Inheritance Graph (UMIG, paper section 3.2) as a pure data structure.

Nodes are model ids with the label set their *own* training data holds; edges point from parent to
child and carry the inheritance relation and the parent's *version* the child was derived from. A
model's versions are 1 (as published) and one more per unlearning request it applied, in order.

Which models a request concerns is decided per version: an edge whose parent version had already
applied request R (the child derives from weights R was removed from) carries none of R's labels.
So ``unlearning_subgraph`` and ``discovery_ancestors`` take the request's id; without it every edge
carries them (a request no model has applied yet, or the paper's static graph).

No I/O: the peer and the centralized reference both build one of these (from lineage records and
receipts, or from the requests they apply) and ask it the same questions.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

RELATIONS = ("aggregate", "finetune", "incremental", "distill", "transfer")
MEMO_LIMIT = 100_000


class UMIGError(ValueError):
    """An edge or node that would make the graph invalid (cycle, unknown model, bad relation)."""


class UMIG:
    """A lineage DAG: ``add_model`` then ``add_edge``; queries follow Algorithm 1, line 3."""

    def __init__(self) -> None:
        self._g = nx.DiGraph()
        # model id -> the requests it applied, in order: version v has applied the first v - 1.
        self._applied: dict[str, list[str]] = {}
        # Answers to the queries below until the graph changes: a peer asks them on every record it
        # takes in (one reconcile pass each), and each one walks the whole graph.
        self._memo: dict[tuple, list[str]] = {}

    # -- building -------------------------------------------------------------------------------
    def add_model(self, model_id: str, labels: Iterable[int]) -> None:
        """Add a model node with the label set of its own data. Re-adding must not change labels."""
        labels = frozenset(int(c) for c in labels)
        if model_id in self._g:
            if self._g.nodes[model_id]["labels"] != labels:
                raise UMIGError(f"model {model_id!r} already present with labels "
                                f"{sorted(self._g.nodes[model_id]['labels'])}, not {sorted(labels)}")
            return
        self._g.add_node(model_id, labels=labels)
        self._applied[model_id] = []
        self._memo.clear()

    def add_edge(self, parent: str, child: str, relation: str, parent_version: int = 1) -> None:
        """Add parent -> child, the child derived from version ``parent_version`` of the parent (1:
        as published); rejects unknown models and versions, unknown relations and cycles."""
        for m in (parent, child):
            if m not in self._g:
                raise UMIGError(f"unknown model {m!r}: add it before adding an edge")
        if relation not in RELATIONS:
            raise UMIGError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")
        if isinstance(parent_version, bool) or not isinstance(parent_version, int) \
                or not 1 <= parent_version <= self.version(parent):
            raise UMIGError(f"{parent!r} has no version {parent_version!r} (its versions are 1.."
                            f"{self.version(parent)})")
        if parent == child or nx.has_path(self._g, child, parent):
            raise UMIGError(f"edge {parent!r} -> {child!r} would make a cycle")
        self._g.add_edge(parent, child, relation=relation, parent_version=parent_version)
        self._memo.clear()

    def add_version(self, model_id: str, request_id: str) -> int:
        """``model_id`` applied ``request_id``: its next version. Returns the new version number."""
        if model_id not in self._g:
            raise UMIGError(f"unknown model {model_id!r}")
        if request_id in self._applied[model_id]:
            raise UMIGError(f"model {model_id!r} has already applied request {request_id!r}")
        # No answer changes: an edge names a version that existed when it was added, and appending
        # a version leaves what every existing version had applied as it was.
        self._applied[model_id].append(request_id)
        return self.version(model_id)

    # -- reading --------------------------------------------------------------------------------
    def __contains__(self, model_id: object) -> bool:
        return model_id in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def _memoized(self, key: tuple, compute) -> list[str]:
        if key not in self._memo:
            if len(self._memo) >= MEMO_LIMIT:  # keys name requests: bound it on a long-lived peer
                self._memo.clear()
            self._memo[key] = compute()
        return list(self._memo[key])  # a copy: callers may change theirs

    def models(self) -> list[str]:
        """All model ids, parents before children (a deterministic topological order)."""
        return self._memoized(("models",), lambda: list(nx.lexicographical_topological_sort(self._g)))

    def labels(self, model_id: str) -> frozenset[int]:
        return self._g.nodes[model_id]["labels"]

    def parents(self, model_id: str) -> list[str]:
        return sorted(self._g.predecessors(model_id))

    def relation(self, parent: str, child: str) -> str:
        return self._g.edges[parent, child]["relation"]

    def parent_version(self, parent: str, child: str) -> int:
        """The version of ``parent`` that ``child`` was derived from."""
        return self._g.edges[parent, child]["parent_version"]

    def version(self, model_id: str) -> int:
        """The model's current version: 1 as published, +1 per request it applied."""
        return 1 + len(self._applied[model_id])

    def applied(self, model_id: str, version: int | None = None) -> list[str]:
        """The requests applied in ``version`` of the model (default: its current one), in order."""
        done = self._applied[model_id]
        return list(done if version is None else done[:max(0, version - 1)])

    def carries(self, parent: str, child: str, request_id: str | None) -> bool:
        """Whether the edge passes what ``request_id`` forgets on to the child: False when the parent
        version the child derived from had already applied that request."""
        if request_id is None:
            return True
        return request_id not in self._applied[parent][:self.parent_version(parent, child) - 1]

    def ancestors(self, model_id: str) -> list[str]:
        """Every model ``model_id`` inherits from, directly or transitively (topological order)."""
        found = nx.ancestors(self._g, model_id)
        return [m for m in self.models() if m in found]

    def descendants(self, model_id: str) -> list[str]:
        """Every model that inherits from ``model_id``, directly or transitively (topological order)."""
        def compute() -> list[str]:
            found = nx.descendants(self._g, model_id)
            return [m for m in self.models() if m in found]
        return self._memoized(("descendants", model_id), compute)

    def depth(self, model_id: str) -> int:
        """Longest path length from any root to this model."""
        preds = list(self._g.predecessors(model_id))
        return 0 if not preds else 1 + max(self.depth(p) for p in preds)

    # -- unlearning queries (section 3.3, Algorithm 1 line 3) ------------------------------------
    def discovery_nodes(self, forget_labels: Iterable[int]) -> list[str]:
        """Models whose own data holds a label in C_f (the roots of the unlearning sub-graph)."""
        cf = frozenset(int(c) for c in forget_labels)
        return [m for m in self.models() if self.labels(m) & cf]

    def unlearning_subgraph(self, forget_labels: Iterable[int], request_id: str | None = None) -> list[str]:
        """Discovery nodes and every model that inherits from one, in topological order. With
        ``request_id``: inheriting only through edges that carry it (see :meth:`carries`), so a child
        of a version that already applied the request is left out (unless its own data holds C_f)."""
        cf = frozenset(int(c) for c in forget_labels)

        def compute() -> list[str]:
            # One walk from all discovery nodes at once (per-node descendants would be O(V·E)).
            affected = set(self.discovery_nodes(cf))
            frontier = list(affected)
            while frontier:
                parent = frontier.pop()
                for child in self._g.successors(parent):
                    if child not in affected and self.carries(parent, child, request_id):
                        affected.add(child)
                        frontier.append(child)
            return [m for m in self.models() if m in affected]
        return self._memoized(("subgraph", cf, request_id), compute)

    def discovery_ancestors(self, model_id: str, forget_labels: Iterable[int],
                            request_id: str | None = None) -> list[str]:
        """The discovery nodes ``model_id`` descends from, itself included (the k of Eq. 5); with
        ``request_id`` only along edges that carry it. Empty: the model is outside the request."""
        if model_id not in self._g:
            raise UMIGError(f"unknown model {model_id!r}")
        cf = frozenset(int(c) for c in forget_labels)

        def compute() -> list[str]:
            reached, frontier = {model_id}, [model_id]
            while frontier:
                child = frontier.pop()
                for parent in self._g.predecessors(child):
                    if parent not in reached and self.carries(parent, child, request_id):
                        reached.add(parent)
                        frontier.append(parent)
            return [m for m in self.models() if m in reached and self.labels(m) & cf]
        return self._memoized(("discovery_ancestors", model_id, cf, request_id), compute)
