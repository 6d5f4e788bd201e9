"""UMIG (section 3.2/3.3) and Algorithm 1 line 3: discovery nodes, unlearning sub-graph, and the
discovery nodes each model descends from (the k of Eq. 5)."""

from __future__ import annotations

import itertools

import pytest

from fiun_peer.core.umig import RELATIONS, UMIG, UMIGError

# ---------------------------------------------------------------------------------------------
# Fig. 2. Roles from section 3.2/3.3: n_s and n_f are the discovery (root) nodes; n_h, n_j, n_l,
# n_p inherit from both (multi-root); n_g, n_i, n_n inherit from n_f only (single-root).
# The text's example paths cannot all hold literally (an edge n_s -> n_f would make n_f an inherited
# node and n_g, n_i, n_n multi-root), so this DAG keeps the roles and the path-length properties:
#   imbalanced: n_i is reached from n_f by n_f->n_i (1) and n_f->n_g->n_i (2);
#               n_j is reached from n_s by n_s->n_j (1) and n_s->n_h->n_j (2).
#   balanced:   n_f->n_h->n_j->n_l->n_p is the only route from n_f to n_l and n_p.
# n_a is an unrelated root (label 5) that also feeds n_p; n_b descends from n_a only.
# Forgetting label 0 makes n_s (labels {0, 1}) and n_f (labels {0, 2}) the discovery nodes.
# ---------------------------------------------------------------------------------------------
FIG2_LABELS = {
    "n_s": {0, 1}, "n_f": {0, 2}, "n_a": {5},
    "n_h": {3}, "n_j": {3, 4}, "n_l": {4}, "n_p": {3}, "n_g": {6}, "n_i": {6}, "n_n": {7}, "n_b": {8},
}
FIG2_EDGES = [
    ("n_f", "n_g", "finetune"), ("n_g", "n_i", "incremental"), ("n_f", "n_i", "distill"),
    ("n_i", "n_n", "transfer"),
    ("n_s", "n_h", "aggregate"), ("n_f", "n_h", "aggregate"),
    ("n_h", "n_j", "finetune"), ("n_s", "n_j", "aggregate"),
    ("n_j", "n_l", "incremental"), ("n_l", "n_p", "aggregate"), ("n_a", "n_p", "aggregate"),
    ("n_a", "n_b", "finetune"),
]
MULTI_ROOT = ["n_h", "n_j", "n_l", "n_p"]
SINGLE_ROOT = ["n_g", "n_i", "n_n"]


def fig2(order: list[str] | None = None) -> UMIG:
    g = UMIG()
    for m in order or list(FIG2_LABELS):
        g.add_model(m, FIG2_LABELS[m])
    for p, c, r in FIG2_EDGES:
        g.add_edge(p, c, r)
    return g


def _assert_topological(g: UMIG, seq: list[str]) -> None:
    pos = {m: i for i, m in enumerate(seq)}
    for p, c, _ in FIG2_EDGES:
        if p in pos and c in pos:
            assert pos[p] < pos[c], (p, c)


def test_fig2_multi_root_discovery_nodes_and_subgraph():
    g = fig2()
    assert g.discovery_nodes([0]) == ["n_f", "n_s"]
    sub = g.unlearning_subgraph([0])
    assert len(sub) == len(set(sub))
    assert set(sub) == {"n_s", "n_f", *MULTI_ROOT, *SINGLE_ROOT}
    assert "n_a" not in sub and "n_b" not in sub
    _assert_topological(g, sub)
    assert sub == [m for m in g.models() if m in set(sub)]


def test_fig2_multi_root_overlapping_nodes_trace_both_discovery_nodes():
    g = fig2()
    for m in MULTI_ROOT:
        assert g.discovery_ancestors(m, [0]) == ["n_f", "n_s"], m
    for m in SINGLE_ROOT:
        assert g.discovery_ancestors(m, [0]) == ["n_f"], m
    # a discovery node is its own (only) discovery ancestor here
    assert g.discovery_ancestors("n_s", [0]) == ["n_s"]
    assert g.discovery_ancestors("n_f", [0]) == ["n_f"]
    # an unrelated model descends from no discovery node
    assert g.discovery_ancestors("n_b", [0]) == []
    assert g.discovery_ancestors("n_a", [0]) == []


def test_fig2_multi_root_per_label_subgraphs():
    g = fig2()
    # label 1 lives only in n_s: only its sub-graph is affected
    assert g.discovery_nodes([1]) == ["n_s"]
    assert g.unlearning_subgraph([1]) == ["n_s", "n_h", "n_j", "n_l", "n_p"]
    assert g.discovery_ancestors("n_p", [1]) == ["n_s"]
    assert g.discovery_ancestors("n_g", [1]) == []
    # label 2 lives only in n_f
    assert g.discovery_nodes([2]) == ["n_f"]
    assert set(g.unlearning_subgraph([2])) == {"n_f", *MULTI_ROOT, *SINGLE_ROOT}
    # {1, 2} is the same two roots as {0}
    assert g.unlearning_subgraph([1, 2]) == g.unlearning_subgraph([0])
    assert g.discovery_ancestors("n_l", [1, 2]) == ["n_f", "n_s"]
    # the unrelated root's label reaches n_p through its second parent
    assert g.unlearning_subgraph([5]) == ["n_a", "n_b", "n_p"]
    assert g.discovery_ancestors("n_p", [0, 5]) == ["n_a", "n_f", "n_s"]
    # a label nobody holds
    assert g.discovery_nodes([9]) == [] and g.unlearning_subgraph([9]) == []
    assert g.labels("n_s") & {0, 1, 2} == frozenset({0, 1})
    assert g.labels("n_h") & {0, 1, 2} == frozenset()


def test_fig2_descendants_are_who_merges_an_announcement():
    g = fig2()
    # n_s's Fisher is merged by its sub-graph for label 1, in topological order, itself excluded
    assert g.descendants("n_s") == ["n_h", "n_j", "n_l", "n_p"]
    assert g.descendants("n_a") == ["n_b", "n_p"]
    assert g.descendants("n_p") == []
    for m in g.models():
        assert all(m in g.ancestors(d) for d in g.descendants(m)), m


def test_fig2_imbalanced_path_nodes_appear_once():
    g = fig2()
    # the structure really is imbalanced: two routes of different length
    assert g.parents("n_i") == ["n_f", "n_g"] and g.parents("n_g") == ["n_f"]
    assert g.parents("n_j") == ["n_h", "n_s"] and g.parents("n_h") == ["n_f", "n_s"]
    sub = g.unlearning_subgraph([0])
    assert sub.count("n_i") == 1 and sub.count("n_j") == 1
    assert g.discovery_ancestors("n_i", [0]) == ["n_f"]  # n_f once, though reached twice
    assert g.discovery_ancestors("n_j", [0]) == ["n_f", "n_s"]
    # depth is the longest route from a root
    assert [g.depth(m) for m in ("n_s", "n_f", "n_g", "n_i", "n_n")] == [0, 0, 1, 2, 3]
    assert [g.depth(m) for m in ("n_h", "n_j", "n_l", "n_p")] == [1, 2, 3, 4]


def test_fig2_balanced_path():
    g = fig2()
    chain = ["n_f", "n_h", "n_j", "n_l", "n_p"]
    for parent, child in itertools.pairwise(chain):
        assert parent in g.parents(child)
    assert g.relation("n_f", "n_h") == "aggregate"
    assert sorted(m for m in g.models() if "n_f" in g.parents(m)) == ["n_g", "n_h", "n_i"]
    sub = g.unlearning_subgraph([2])
    assert [m for m in sub if m in chain] == chain


def test_fig2_results_do_not_depend_on_insertion_order():
    a = fig2()
    b = fig2(order=sorted(FIG2_LABELS, reverse=True))
    assert a.models() == b.models()
    assert a.unlearning_subgraph([0]) == b.unlearning_subgraph([0])
    assert all(a.discovery_ancestors(m, [0]) == b.discovery_ancestors(m, [0]) for m in FIG2_LABELS)


def test_fig2_inherited_node_holding_a_forget_label_is_also_discovery():
    g = fig2()
    g2 = UMIG()
    labels = dict(FIG2_LABELS, n_j={0, 3})
    for m, ls in labels.items():
        g2.add_model(m, ls)
    for p, c, r in FIG2_EDGES:
        g2.add_edge(p, c, r)
    assert g2.discovery_nodes([0]) == ["n_f", "n_s", "n_j"]
    assert g2.discovery_ancestors("n_j", [0]) == ["n_f", "n_s", "n_j"]
    assert g2.discovery_ancestors("n_p", [0]) == ["n_f", "n_s", "n_j"]
    assert g2.unlearning_subgraph([0]) == g.unlearning_subgraph([0])


# ---------------------------------------------------------------------------------------------
# Fig. 4: w_h inherits from w_j, w_s (label 1) and w_f (label 2).
# ---------------------------------------------------------------------------------------------
def fig4() -> UMIG:
    g = UMIG()
    g.add_model("w_j", [1])
    g.add_model("w_s", [1])
    g.add_model("w_f", [2])
    g.add_model("w_h", [3])
    for p in ("w_j", "w_s", "w_f"):
        g.add_edge(p, "w_h", "aggregate")
    return g


def test_fig4_merges_three_discovery_nodes():
    g = fig4()
    assert g.discovery_nodes([1, 2]) == ["w_f", "w_j", "w_s"]
    assert g.discovery_ancestors("w_h", [1, 2]) == ["w_f", "w_j", "w_s"]
    assert g.unlearning_subgraph([1, 2]) == ["w_f", "w_j", "w_s", "w_h"]
    assert g.labels("w_j") & {1, 2} == frozenset({1})
    assert g.labels("w_f") & {1, 2} == frozenset({2})


def test_fig4_forget_label_2_only():
    g = fig4()
    assert g.discovery_ancestors("w_h", [2]) == ["w_f"]
    assert g.unlearning_subgraph([2]) == ["w_f", "w_h"]
    assert g.discovery_ancestors("w_h", [1]) == ["w_j", "w_s"]
    assert g.discovery_ancestors("w_j", [2]) == []


# ---------------------------------------------------------------------------------------------
# Building rules
# ---------------------------------------------------------------------------------------------
def _chain() -> UMIG:
    g = UMIG()
    for m in "abc":
        g.add_model(m, [0])
    g.add_edge("a", "b", "finetune")
    g.add_edge("b", "c", "finetune")
    return g


def test_cycle_rejected_and_graph_unchanged():
    g = _chain()
    with pytest.raises(UMIGError, match="cycle"):
        g.add_edge("c", "a", "finetune")
    with pytest.raises(UMIGError, match="cycle"):
        g.add_edge("b", "a", "distill")
    assert g.parents("a") == [] and not any("c" in g.parents(m) for m in g.models())
    assert g.models() == ["a", "b", "c"]


def test_self_loop_rejected():
    g = _chain()
    with pytest.raises(UMIGError, match="cycle"):
        g.add_edge("b", "b", "finetune")
    assert g.parents("b") == ["a"]


def test_unknown_model_rejected():
    g = _chain()
    with pytest.raises(UMIGError, match="unknown model"):
        g.add_edge("a", "zz", "finetune")
    with pytest.raises(UMIGError, match="unknown model"):
        g.add_edge("zz", "a", "finetune")
    with pytest.raises(UMIGError, match="unknown model"):
        g.discovery_ancestors("zz", [0])
    assert "zz" not in g and len(g) == 3


@pytest.mark.parametrize("relation", ["fine-tune", "", "AGGREGATE", "parent"])
def test_bad_relation_rejected(relation):
    g = _chain()
    g.add_model("d", [1])
    with pytest.raises(UMIGError, match="unknown relation"):
        g.add_edge("c", "d", relation)
    assert g.parents("d") == []


def test_every_known_relation_accepted():
    g = UMIG()
    g.add_model("root", [0])
    for i, r in enumerate(RELATIONS):
        g.add_model(f"m{i}", [0])
        g.add_edge("root", f"m{i}", r)
        assert g.relation("root", f"m{i}") == r
    assert set(RELATIONS) == {"aggregate", "finetune", "incremental", "distill", "transfer"}


def test_readding_model():
    g = UMIG()
    g.add_model("a", [1, 2])
    g.add_model("a", (2, 1, 2))  # same label set: a no-op
    assert g.labels("a") == frozenset({1, 2}) and len(g) == 1
    with pytest.raises(UMIGError, match="already present"):
        g.add_model("a", [1])
    with pytest.raises(UMIGError, match="already present"):
        g.add_model("a", [1, 2, 3])
    assert g.labels("a") == frozenset({1, 2})


def test_models_topological_order():
    g = UMIG()
    for m in ["c", "b", "a", "d"]:
        g.add_model(m, [0])
    assert g.models() == ["a", "b", "c", "d"]  # no edges: lexicographic
    g.add_edge("d", "a", "finetune")
    g.add_edge("c", "b", "distill")
    # ready set starts {c, d}: c; then b is ready and b < d; then d, then a
    assert g.models() == ["c", "b", "d", "a"]
    seq = fig2().models()
    assert set(seq) == set(FIG2_LABELS) and len(seq) == len(FIG2_LABELS)
    _assert_topological(fig2(), seq)


def test_ancestors_are_transitive_and_topologically_ordered():
    g = UMIG()
    for m in ("r", "x", "y", "z"):
        g.add_model(m, [0])
    g.add_edge("r", "x", "finetune")
    g.add_edge("x", "z", "finetune")
    g.add_edge("y", "z", "aggregate")
    assert g.ancestors("z") == ["r", "x", "y"]
    assert g.ancestors("x") == ["r"]
    assert g.ancestors("r") == []


def test_answers_follow_the_graph_as_it_grows_and_callers_cannot_change_them():
    g = UMIG()
    g.add_model("a", [1])
    g.add_model("b", [2])
    g.add_edge("a", "b", "finetune")
    assert g.unlearning_subgraph([1]) == ["a", "b"] and g.descendants("a") == ["b"]
    mine = g.models()
    mine.append("zzz")                                   # a caller's copy, not the graph's
    assert g.models() == ["a", "b"]
    g.add_model("c", [3])
    assert g.models() == ["a", "b", "c"] and g.unlearning_subgraph([1]) == ["a", "b"]
    g.add_edge("b", "c", "distill")
    assert g.unlearning_subgraph([1]) == ["a", "b", "c"] and g.descendants("a") == ["b", "c"]
    assert g.unlearning_subgraph([3]) == ["c"] and g.unlearning_subgraph([7]) == []


# ---------------------------------------------------------------------------------------------
# Versions (issue 18): an edge names the parent version the child derived from, and a request
# reaches the child through it only if that version had not applied the request yet.
# The il case: g (0-5) -> a (0-7) -> b (0-9); forget-2 applied by all three (each now at v2); then
# d (b v2, holds label 2), e (b v1, no label 2) and f (b v2, labels 8-9) are added.
# ---------------------------------------------------------------------------------------------


def _il_after_forget_2() -> UMIG:
    g = UMIG()
    for m, labels in (("g", range(6)), ("a", range(8)), ("b", range(10))):
        g.add_model(m, labels)
    g.add_edge("g", "a", "incremental")
    g.add_edge("a", "b", "incremental")
    for m in ("g", "a", "b"):
        assert g.add_version(m, "forget-2") == 2
    for m, labels, version in (("d", range(10), 2), ("e", [0, 1, 3, 8], 1), ("f", [8, 9], 2)):
        g.add_model(m, labels)
        g.add_edge("b", m, "finetune", version)
    return g


def test_a_child_of_a_version_that_applied_the_request_is_outside_it():
    g = _il_after_forget_2()
    assert g.unlearning_subgraph([2], "forget-2") == ["g", "a", "b", "d", "e"]
    assert g.discovery_ancestors("d", [2], "forget-2") == ["d"]              # b v2 passes nothing on
    assert g.discovery_ancestors("e", [2], "forget-2") == ["g", "a", "b"]    # b v1 held label 2
    assert g.discovery_ancestors("f", [2], "forget-2") == []
    assert not g.carries("b", "f", "forget-2") and g.carries("b", "e", "forget-2")
    # By the graph's shape alone (no request id) f still descends from the data: who must answer.
    assert g.unlearning_subgraph([2]) == ["g", "a", "b", "d", "e", "f"]
    assert g.discovery_ancestors("f", [2]) == ["g", "a", "b"]


def test_a_new_request_reaches_a_child_through_the_version_it_derived_from():
    g = _il_after_forget_2()
    assert g.unlearning_subgraph([3], "forget-3") == ["g", "a", "b", "d", "e", "f"]
    assert g.discovery_ancestors("f", [3], "forget-3") == ["g", "a", "b"]
    assert g.discovery_ancestors("d", [3], "forget-3") == ["g", "a", "b", "d"]
    assert (g.version("b"), g.parent_version("b", "f"), g.applied("b", 2), g.applied("b", 1)) == \
        (2, 2, ["forget-2"], [])
    g.add_version("b", "forget-3")
    # Applying a later request changes no answer about the versions edges already name.
    assert g.discovery_ancestors("f", [3], "forget-3") == ["g", "a", "b"] and g.applied("b") == ["forget-2", "forget-3"]


def test_multi_root_child_inherits_through_the_dirty_parent_only():
    # x (holds 0) and y (holds 0) both applied r; c aggregates x v2 (clean) and y v1 (dirty); z, a
    # child of c, and w, a child of x v2 only.
    g = UMIG()
    for m, labels in (("x", [0, 1]), ("y", [0, 2]), ("c", [1, 2]), ("z", [5]), ("w", [6])):
        g.add_model(m, labels)
    for m in ("x", "y"):
        g.add_version(m, "r")
    g.add_edge("x", "c", "aggregate", 2)
    g.add_edge("y", "c", "aggregate", 1)
    g.add_edge("c", "z", "finetune")
    g.add_edge("x", "w", "distill", 2)
    assert g.unlearning_subgraph([0], "r") == ["x", "y", "c", "z"]
    assert g.discovery_ancestors("c", [0], "r") == ["y"]
    assert g.discovery_ancestors("z", [0], "r") == ["y"]
    assert g.discovery_ancestors("w", [0], "r") == []
    # Another request neither applied: every edge carries it.
    assert g.discovery_ancestors("z", [0], "s") == ["x", "y"] and "w" in g.unlearning_subgraph([0], "s")


def test_old_edges_name_version_1_and_carry_every_request():
    """Records from before issue 18 always named the parent's first version: read as written, such a
    child inherits from every request its parent applied, which is what the peers did then."""
    g = UMIG()
    g.add_model("p", [2])
    g.add_model("c", [5])
    g.add_version("p", "r")
    g.add_edge("p", "c", "finetune")                      # parent_version defaults to 1
    assert g.parent_version("p", "c") == 1 and g.discovery_ancestors("c", [2], "r") == ["p"]


@pytest.mark.parametrize("version", [0, 3, True, "2", None])
def test_an_unknown_parent_version_is_refused_and_the_graph_unchanged(version):
    g = UMIG()
    g.add_model("p", [2])
    g.add_model("c", [5])
    g.add_version("p", "r")
    with pytest.raises(UMIGError, match="no version"):
        g.add_edge("p", "c", "finetune", version)
    assert g.parents("c") == [] and g.unlearning_subgraph([2], "r") == ["p"]


def test_a_request_applies_once_per_model():
    g = UMIG()
    g.add_model("p", [2])
    g.add_version("p", "r")
    with pytest.raises(UMIGError, match="already applied"):
        g.add_version("p", "r")
    with pytest.raises(UMIGError, match="unknown model"):
        g.add_version("q", "r")
    assert g.version("p") == 2
