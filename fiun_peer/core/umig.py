"""The Unified Model Inheritance Graph (UMIG, paper section 3.2) as a pure data structure.

Nodes are model ids with the label set their *own* training data holds; edges point from parent to
child and carry the inheritance relation. No I/O: the peer and the centralized reference both build
one of these from lineage records and ask it the same questions.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

RELATIONS = ("aggregate", "finetune", "incremental", "distill", "transfer")


class UMIGError(ValueError):
    """An edge or node that would make the graph invalid (cycle, unknown model, bad relation)."""


class UMIG:
    """A lineage DAG: ``add_model`` then ``add_edge``; queries follow Algorithm 1, line 3."""

    def __init__(self) -> None:
        self._g = nx.DiGraph()
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
        self._memo.clear()

    def add_edge(self, parent: str, child: str, relation: str) -> None:
        """Add parent -> child; rejects unknown models, unknown relations and cycles."""
        for m in (parent, child):
            if m not in self._g:
                raise UMIGError(f"unknown model {m!r}: add it before adding an edge")
        if relation not in RELATIONS:
            raise UMIGError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")
        if parent == child or nx.has_path(self._g, child, parent):
            raise UMIGError(f"edge {parent!r} -> {child!r} would make a cycle")
        self._g.add_edge(parent, child, relation=relation)
        self._memo.clear()

    # -- reading --------------------------------------------------------------------------------
    def __contains__(self, model_id: object) -> bool:
        return model_id in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def _memoized(self, key: tuple, compute) -> list[str]:
        if key not in self._memo:
            self._memo[key] = compute()
        return list(self._memo[key])  # a copy: callers may change theirs

    def models(self) -> list[str]:
        """All model ids, parents before children (a deterministic topological order)."""
        return self._memoized(("models",), lambda: list(nx.lexicographical_topological_sort(self._g)))

    def labels(self, model_id: str) -> frozenset[int]:
        return self._g.nodes[model_id]["labels"]

    def parents(self, model_id: str) -> list[str]:
        return sorted(self._g.predecessors(model_id))

    def children(self, model_id: str) -> list[str]:
        return sorted(self._g.successors(model_id))

    def relation(self, parent: str, child: str) -> str:
        return self._g.edges[parent, child]["relation"]

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

    def unlearning_subgraph(self, forget_labels: Iterable[int]) -> list[str]:
        """Discovery nodes and every model that inherits from one, in topological order."""
        cf = frozenset(int(c) for c in forget_labels)

        def compute() -> list[str]:
            # One walk from all discovery nodes at once (per-node descendants would be O(V·E)).
            affected = set(self.discovery_nodes(cf))
            frontier = list(affected)
            while frontier:
                for child in self._g.successors(frontier.pop()):
                    if child not in affected:
                        affected.add(child)
                        frontier.append(child)
            return [m for m in self.models() if m in affected]
        return self._memoized(("subgraph", cf), compute)

    def discovery_ancestors(self, model_id: str, forget_labels: Iterable[int]) -> list[str]:
        """The discovery nodes ``model_id`` descends from, itself included (the k of Eq. 5)."""
        if model_id not in self._g:
            raise UMIGError(f"unknown model {model_id!r}")
        cf = frozenset(int(c) for c in forget_labels)
        return [m for m in [*self.ancestors(model_id), model_id] if self.labels(m) & cf]

    def forget_labels_held(self, model_id: str, forget_labels: Iterable[int]) -> frozenset[int]:
        """The part of C_f that this model's own data holds (its \\hat D^D_i labels)."""
        return self.labels(model_id) & frozenset(int(c) for c in forget_labels)
