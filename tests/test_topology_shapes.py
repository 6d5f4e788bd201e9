"""The experiment topologies: root_chain, binary_tree and broom (Hyper-Distance) and fl_n (Scale)."""

from __future__ import annotations

import pytest

from simulations.data import load_digits
from simulations.topology import TopologyError, assign_data, binary_tree, broom, fl_n, root_chain, to_umig


def _depths(nodes) -> dict[str, int]:
    depth: dict[str, int] = {}
    for n in nodes:
        depth[n.id] = 1 + max((depth[p] for p in n.parents), default=-1)
    return depth


@pytest.mark.parametrize("depth", [1, 2, 8, 16])
def test_root_chain_has_depth_hops_and_only_the_root_holds_the_forget_labels(depth):
    nodes = root_chain(depth)
    assert [n.id for n in nodes] == [f"n{i}" for i in range(depth + 1)]
    assert max(_depths(nodes).values()) == depth
    g = to_umig(nodes)
    for label in (2, 5, 9):
        assert g.discovery_nodes([label]) == ["n0"]
        assert g.unlearning_subgraph([label]) == [n.id for n in nodes]
    assert g.discovery_nodes([0]) == [n.id for n in nodes]  # a shared label: every node holds it


@pytest.mark.parametrize("depth", [1, 2, 4, 16])
def test_binary_tree_every_inner_node_has_two_children(depth):
    nodes = binary_tree(depth)
    assert len(nodes) == 2 * depth + 1
    d = _depths(nodes)
    assert max(d.values()) == depth
    children: dict[str, list[str]] = {}
    for n in nodes:
        for p in n.parents:
            children.setdefault(p, []).append(n.id)
    assert all(len(c) == 2 for c in children.values())
    assert set(children) == {f"n{i}" for i in range(depth)}      # leaves: n{depth} and every l{i}
    g = to_umig(nodes)
    assert g.discovery_nodes([5]) == ["n0"]
    assert set(g.unlearning_subgraph([5])) == {n.id for n in nodes}
    assert all(g.discovery_ancestors(n.id, [5]) == ["n0"] for n in nodes)


@pytest.mark.parametrize("depth", [1, 2, 8, 16])
def test_broom_keeps_its_size_and_only_the_depth_changes(depth):
    nodes = broom(depth, size=16)
    assert len(nodes) == 17
    d = _depths(nodes)
    assert max(d.values()) == depth
    assert sorted(v for k, v in d.items() if k.startswith("l")) == [1] * (16 - depth)
    g = to_umig(nodes)
    assert g.discovery_nodes([9]) == ["n0"]
    assert set(g.unlearning_subgraph([9])) == {n.id for n in nodes}
    assert [n.id for n in broom(16, size=16)] == [n.id for n in root_chain(16)]
    with pytest.raises(TopologyError, match="descendants"):
        broom(17, size=16)


@pytest.mark.parametrize("clients", [1, 7, 63])
def test_fl_n_aggregates_every_client_into_g(clients):
    nodes = fl_n(clients)
    assert len(nodes) == clients + 1
    g_spec = nodes[-1]
    assert g_spec.id == "g" and g_spec.relation == "aggregate" and len(g_spec.parents) == clients
    g = to_umig(nodes)
    assert set(g.discovery_nodes([2])) == {n.id for n in nodes}  # every model holds every label
    assert set(g.discovery_ancestors("g", [2])) >= {f"c{i}" for i in range(1, clients + 1)}


def test_fl_n_children_form_a_chain_after_g():
    nodes = fl_n(3, children=2)
    assert [(n.id, n.parents) for n in nodes[-2:]] == [("r1", ("g",)), ("r2", ("r1",))]


@pytest.mark.parametrize("nodes", [root_chain(16), binary_tree(16), fl_n(63)], ids=["chain16", "tree16", "fl64"])
def test_largest_shapes_get_disjoint_non_empty_digits_data(nodes):
    ds = load_digits(0)
    idx = assign_data(nodes, ds.y_train, seed=0)
    flat = [i for v in idx.values() for i in v]
    assert len(flat) == len(set(flat)) and all(idx[n.id] for n in nodes)


@pytest.mark.parametrize("make", [root_chain, binary_tree, broom])
def test_depth_zero_is_rejected(make):
    with pytest.raises(TopologyError, match="depth"):
        make(0)


def test_fl_n_needs_a_client():
    with pytest.raises(TopologyError, match="n_clients"):
        fl_n(0)


def test_a_fixed_descendant_share_is_the_same_at_every_depth():
    small, deep = binary_tree(2, share=0.025), binary_tree(16, share=0.025)
    assert {n.share for n in small[1:]} == {n.share for n in deep[1:]} == {0.025}
    with pytest.raises(TopologyError, match="more data"):
        root_chain(16, share=0.1)                   # 16 x 0.1 > the 0.8 the root leaves
