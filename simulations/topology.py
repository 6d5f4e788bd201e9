"""Topologies of the paper's Fig. 6 (FL, DDPL, IL, TL) and any DAG from a JSON file.

A topology is a list of nodes in parents-first order. Each node owns a disjoint slice of the
training set: ``share`` of the samples of each label in ``labels``. JSON format::

    {"nodes": [
      {"id": "g", "parents": [], "labels": [0,1,2,3,4,5], "share": 0.4, "epochs": 30},
      {"id": "a", "parents": ["g"], "relation": "incremental", "labels": [0,1,2,3,4,5,6,7],
       "share": 0.3, "epochs": 10}
    ]}

``relation`` is one of aggregate, finetune, incremental, distill, transfer (ignored for roots);
``epochs`` may be 0 (e.g. a pure FedAvg aggregator, whose data then only serves its model Fisher).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fiun_peer.core.umig import RELATIONS, UMIG

FRAMEWORKS = ("fl", "ddpl", "il", "tl")


@dataclass(frozen=True)
class NodeSpec:
    id: str
    parents: tuple[str, ...] = ()
    relation: str | None = None
    labels: tuple[int, ...] = ()
    share: float = 0.1
    epochs: int = 10
    reported: bool = field(default=True, compare=False)


class TopologyError(ValueError):
    pass


def _validate(nodes: list[NodeSpec], num_classes: int) -> list[NodeSpec]:
    seen: set[str] = set()
    for n in nodes:
        if not n.id or n.id in seen:
            raise TopologyError(f"node ids must be unique and non-empty (bad: {n.id!r})")
        for p in n.parents:
            if p not in seen:
                raise TopologyError(f"node {n.id!r}: parent {p!r} must appear earlier in the list")
        if n.parents and n.relation not in RELATIONS:
            raise TopologyError(f"node {n.id!r}: relation {n.relation!r} not one of {', '.join(RELATIONS)}")
        if not n.labels:
            raise TopologyError(f"node {n.id!r}: needs a non-empty label set (its own data)")
        if any(c < 0 or c >= num_classes for c in n.labels):
            raise TopologyError(f"node {n.id!r}: labels must lie in [0, {num_classes})")
        if not 0 < n.share <= 1:
            raise TopologyError(f"node {n.id!r}: share must be in (0, 1]")
        if n.epochs < 0:
            raise TopologyError(f"node {n.id!r}: epochs must be >= 0")
        seen.add(n.id)
    return nodes


def builtin(framework: str, num_classes: int = 10) -> list[NodeSpec]:
    """The four frameworks, scaled to digits (10 classes); ``reported`` marks w_g, w_a, w_b."""
    all_labels = tuple(range(num_classes))
    k = num_classes
    if framework == "fl":
        # Fig. 6a: 5 clients -> global w_g (FedAvg) -> next rounds w_a -> w_b.
        clients = [NodeSpec(f"c{i}", labels=all_labels, share=0.16, epochs=40, reported=False)
                   for i in range(1, 6)]
        return _validate(clients + [
            NodeSpec("g", tuple(c.id for c in clients), "aggregate", all_labels, share=0.05, epochs=0),
            NodeSpec("a", ("g",), "finetune", all_labels, share=0.075, epochs=20),
            NodeSpec("b", ("a",), "finetune", all_labels, share=0.075, epochs=20),
        ], k)
    if framework == "ddpl":
        # Fig. 6b: w_g split into 3 parallel sub-tasks, aggregated into w_a, next iteration w_b.
        subs = [NodeSpec(f"s{i}", ("g",), "finetune", all_labels, share=0.2, epochs=20, reported=False)
                for i in range(1, 4)]
        return _validate([NodeSpec("g", (), None, all_labels, share=0.2, epochs=40)] + subs + [
            NodeSpec("a", tuple(s.id for s in subs), "aggregate", all_labels, share=0.1, epochs=0),
            NodeSpec("b", ("a",), "finetune", all_labels, share=0.1, epochs=20),
        ], k)
    if framework == "il":
        # Fig. 6c: a chain; each step adds new data and two new classes (paper: 0-90, +2, +2).
        return _validate([
            NodeSpec("g", (), None, tuple(range(k - 4)), share=0.4, epochs=40),
            NodeSpec("a", ("g",), "incremental", tuple(range(k - 2)), share=0.3, epochs=20),
            NodeSpec("b", ("a",), "incremental", all_labels, share=0.3, epochs=20),
        ], k)
    if framework == "tl":
        # Pre-train w_g, then transfer (head fine-tuned, backbone frozen) to two children on new tasks.
        return _validate([
            NodeSpec("g", (), None, tuple(range(k - 3)), share=0.5, epochs=40),
            NodeSpec("a", ("g",), "transfer", tuple(range(k - 1)), share=0.25, epochs=20),
            NodeSpec("b", ("g",), "transfer", all_labels, share=0.25, epochs=20),
        ], k)
    raise TopologyError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")


def chain(depth: int, num_classes: int = 10, epochs: int = 5) -> list[NodeSpec]:
    """A fine-tuning chain of ``depth`` + 1 models (for the Hyper-Distance experiment)."""
    share = 1.0 / (depth + 1)
    labels = tuple(range(num_classes))
    nodes = [NodeSpec("n0", (), None, labels, share=share, epochs=max(epochs, 10))]
    nodes += [NodeSpec(f"n{i}", (f"n{i - 1}",), "finetune", labels, share=share, epochs=epochs)
              for i in range(1, depth + 1)]
    return _validate(nodes, num_classes)


def _descendant_share(n_descendants: int, root_share: float, share: float | None) -> float:
    if share is None:
        return (1.0 - root_share) / max(n_descendants, 1)
    if share * n_descendants > 1.0 - root_share + 1e-9:
        raise TopologyError(f"{n_descendants} descendants of share {share} need more data than the root leaves")
    return share


def root_chain(depth: int, *, root_only: tuple[int, ...] = (2, 5, 9), num_classes: int = 10,
               epochs: int = 5, root_share: float = 0.2, share: float | None = None) -> list[NodeSpec]:
    """A fine-tuning chain n0 -> n1 -> ... -> n``depth`` where only the root n0 holds the labels
    ``root_only``: a request for any of them has n0 as its single discovery node and every other
    model as an inherited node (Hyper-Distance, where the forget data sits ``depth`` hops upstream).
    ``share`` fixes each descendant's data share (default: the rest split evenly, so the total data
    along the chain, hence re-training's work, would not grow with depth)."""
    if depth < 1:
        raise TopologyError("depth must be >= 1")
    rest = tuple(c for c in range(num_classes) if c not in set(root_only))
    share = _descendant_share(depth, root_share, share)
    nodes = [NodeSpec("n0", (), None, tuple(range(num_classes)), share=root_share, epochs=max(epochs, 10))]
    nodes += [NodeSpec(f"n{i}", (f"n{i - 1}",), "finetune", rest, share=share, epochs=epochs)
              for i in range(1, depth + 1)]
    return _validate(nodes, num_classes)


def binary_tree(depth: int, *, root_only: tuple[int, ...] = (2, 5, 9), num_classes: int = 10,
                epochs: int = 5, root_share: float = 0.2, share: float | None = None) -> list[NodeSpec]:
    """A binary tree of depth ``depth`` kept to 2·depth + 1 models (a full one would need
    2^(depth+1) - 1): the spine n0 -> n1 -> ... -> n``depth`` of :func:`root_chain`, where every
    spine node n(i-1) also has a second child, the leaf l``i``. So every inner node has two
    children, the deepest models are ``depth`` hops from the root, and each level adds a branch.
    Only the root holds ``root_only``; every other model inherits the forget data."""
    if depth < 1:
        raise TopologyError("depth must be >= 1")
    rest = tuple(c for c in range(num_classes) if c not in set(root_only))
    share = _descendant_share(2 * depth, root_share, share)
    nodes = [NodeSpec("n0", (), None, tuple(range(num_classes)), share=root_share, epochs=max(epochs, 10))]
    for i in range(1, depth + 1):
        nodes.append(NodeSpec(f"n{i}", (f"n{i - 1}",), "finetune", rest, share=share, epochs=epochs))
        nodes.append(NodeSpec(f"l{i}", (f"n{i - 1}",), "finetune", rest, share=share, epochs=epochs))
    return _validate(nodes, num_classes)


def broom(depth: int, *, size: int = 16, root_only: tuple[int, ...] = (2, 5, 9), num_classes: int = 10,
          epochs: int = 5, root_share: float = 0.2, share: float | None = None) -> list[NodeSpec]:
    """``size`` descendants of the root at every depth: the spine n0 -> n1 -> ... -> n``depth`` of
    :func:`root_chain`, and the rest as leaves l1..l(``size`` - ``depth``) fine-tuned straight from
    n0. Only the depth changes with ``depth`` (the deepest model is ``depth`` hops from the root);
    the number of models, hence the unlearning work, does not. So on a machine with fewer cores
    than peers it measures the depth's own effect, which a chain mixes with the growing work of
    one more model per hop. Only the root holds ``root_only``; every other model inherits it."""
    if depth < 1:
        raise TopologyError("depth must be >= 1")
    if depth > size:
        raise TopologyError(f"depth {depth} needs at least {depth} descendants, size is {size}")
    rest = tuple(c for c in range(num_classes) if c not in set(root_only))
    share = _descendant_share(size, root_share, share)
    nodes = [NodeSpec("n0", (), None, tuple(range(num_classes)), share=root_share, epochs=max(epochs, 10))]
    nodes += [NodeSpec(f"n{i}", (f"n{i - 1}",), "finetune", rest, share=share, epochs=epochs)
              for i in range(1, depth + 1)]
    nodes += [NodeSpec(f"l{i}", ("n0",), "finetune", rest, share=share, epochs=epochs)
              for i in range(1, size - depth + 1)]
    return _validate(nodes, num_classes)


def fl_n(n_clients: int, *, num_classes: int = 10, epochs: int = 10, children: int = 0) -> list[NodeSpec]:
    """Federated learning with ``n_clients`` clients c1..cN (all labels, equal disjoint shares) whose
    FedAvg is the global model g, optionally followed by a fine-tuning chain of ``children`` next
    rounds r1..rK. ``n_clients`` + 1 + ``children`` models (the Scale experiment: one peer each).
    Every client holds every label, so each one is a discovery node for any request."""
    if n_clients < 1 or children < 0:
        raise TopologyError("need n_clients >= 1 and children >= 0")
    labels = tuple(range(num_classes))
    share = 0.9 / (n_clients + children)  # 10% left over for g's own data (its model Fisher)
    clients = [NodeSpec(f"c{i}", (), None, labels, share=share, epochs=epochs) for i in range(1, n_clients + 1)]
    nodes = clients + [NodeSpec("g", tuple(c.id for c in clients), "aggregate", labels, share=0.1 / 2, epochs=0)]
    for k in range(1, children + 1):
        nodes.append(NodeSpec(f"r{k}", (nodes[-1].id,), "finetune", labels, share=share, epochs=epochs))
    return _validate(nodes, num_classes)


RANDOM_NODES = (6, 16)
RANDOM_MAX_DEPTH = 8
_RELATION_EPOCHS = {"finetune": 5, "incremental": 10, "transfer": 10, "distill": 15, "aggregate": 3}


def random_lineage(seed: int, *, nodes: int | None = None, num_classes: int = 10) -> list[NodeSpec]:
    """A seeded random lineage of the kind real model families form (issue 13's hard case).

    1-3 roots r0.. trained on every label; the descendants m1.. each own a *narrow* label set (2-5
    labels) and derive from earlier models by every relation (each of finetune, aggregate, distill,
    transfer and incremental appears once there are enough descendants). An aggregate has 2-3
    parents and a quarter of the others have two, so paths are multi-root and of unequal length
    (imbalanced); parents are drawn mostly from the newest models, which makes chains up to
    :data:`RANDOM_MAX_DEPTH` deep. Shares keep every label's samples enough for its holders.
    The same ``seed`` (and ``nodes``) always gives the same lineage.
    """
    import random

    rng = random.Random(f"fiun-lineage:{seed}")  # a str seed hashes stably across processes
    lo, hi = RANDOM_NODES
    n = rng.randint(lo, hi) if nodes is None else nodes
    if not lo <= n <= hi:
        raise TopologyError(f"a random lineage has {lo}-{hi} models, not {n}")
    if num_classes < 5:
        raise TopologyError("a random lineage needs at least 5 classes (descendants own 2-5 labels)")
    n_roots = rng.choice((1, 1, 2, 2, 3))
    n_desc = n - n_roots
    relations = list(RELATIONS) if n_desc >= len(RELATIONS) else []
    relations += [rng.choice(RELATIONS) for _ in range(n_desc - len(relations))]
    rng.shuffle(relations)
    if n_roots == 1 and relations[0] == "aggregate":  # the first descendant has one model to derive from
        swap = next((i for i, r in enumerate(relations) if r != "aggregate"), None)
        if swap is None:
            relations[0] = "finetune"
        else:
            relations[0], relations[swap] = relations[swap], relations[0]
    all_labels = tuple(range(num_classes))
    label_sets = [tuple(sorted(rng.sample(all_labels, rng.randint(2, 5)))) for _ in range(n_desc)]
    holders = {c: sum(c in ls for ls in label_sets) for c in all_labels}
    root_share = 0.4 / n_roots
    out = [NodeSpec(f"r{i}", (), None, all_labels, share=root_share, epochs=30) for i in range(n_roots)]
    depth = {s.id: 0 for s in out}
    for i, (rel, labels) in enumerate(zip(relations, label_sets, strict=True), start=1):
        pool = [s.id for s in out if depth[s.id] < RANDOM_MAX_DEPTH]
        want = rng.randint(2, 3) if rel == "aggregate" else (2 if rng.random() < 0.25 else 1)
        parents: list[str] = []
        while len(parents) < min(want, len(pool)):
            # Mostly the newest model (lineages grow deep), sometimes any earlier one.
            cand = pool[-1 - len(parents)] if rng.random() < 0.6 else rng.choice(pool)
            if cand not in parents:
                parents.append(cand)
        share = min(0.12, min(0.55 / holders[c] for c in labels))
        epochs = _RELATION_EPOCHS[rel] if rel != "aggregate" else rng.choice((0, 3))
        spec = NodeSpec(f"m{i}", tuple(sorted(parents)), rel, labels, share=round(share, 4), epochs=epochs)
        depth[spec.id] = 1 + max(depth[p] for p in spec.parents)
        out.append(spec)
    return _validate(out, num_classes)


def from_json(path: str | Path, num_classes: int) -> list[NodeSpec]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TopologyError(f"cannot read topology {path}: {exc}") from exc
    raw = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise TopologyError(f"{path}: expected an object with a non-empty 'nodes' list")
    nodes = []
    for i, n in enumerate(raw):
        if not isinstance(n, dict) or "id" not in n:
            raise TopologyError(f"{path}: node {i} must be an object with an 'id'")
        try:
            nodes.append(NodeSpec(
                id=str(n["id"]), parents=tuple(str(p) for p in n.get("parents", [])),
                relation=n.get("relation"), labels=tuple(int(c) for c in n.get("labels", range(num_classes))),
                share=float(n.get("share", 0.1)), epochs=int(n.get("epochs", 10)),
                reported=bool(n.get("reported", True))))
        except (TypeError, ValueError) as exc:
            raise TopologyError(f"{path}: node {n.get('id')!r}: {exc}") from exc
    return _validate(nodes, num_classes)


def to_umig(nodes: list[NodeSpec]) -> UMIG:
    g = UMIG()
    for n in nodes:
        g.add_model(n.id, n.labels)
        for p in n.parents:
            g.add_edge(p, n.id, n.relation or "finetune")
    return g


def assign_data(nodes: list[NodeSpec], y_train, seed: int) -> dict[str, list[int]]:
    """Disjoint own-data indices per node: ``share`` of each of its labels' samples, drawn in node
    order from a seeded shuffle. Raises if the shares of a label add up to more than 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.asarray(y_train)
    pools = {int(c): list(rng.permutation(np.flatnonzero(y == c))) for c in np.unique(y)}
    sizes = {c: len(p) for c, p in pools.items()}
    cursor = dict.fromkeys(pools, 0)
    out: dict[str, list[int]] = {}
    for n in nodes:
        idx: list[int] = []
        for c in n.labels:
            take = int(n.share * sizes.get(c, 0) + 1e-9)  # floor: shares summing to 1 never overflow
            if cursor.get(c, 0) + take > sizes.get(c, 0):
                raise TopologyError(f"label {c}: the nodes' shares add up to more than all its samples")
            idx += pools[c][cursor[c]:cursor[c] + take]
            cursor[c] += take
        if not idx:
            raise TopologyError(f"node {n.id!r} got no data; raise its share")
        out[n.id] = sorted(int(i) for i in idx)
    return out
