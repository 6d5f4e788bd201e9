"""Realistic lineages (issue 13): the seeded random-lineage generator, the class-row restriction of
Eq. 6 and the retained-class gauge in the core, and the edge cases on trained models: a narrow
inherited node keeps what it inherited, a discovery node whose own data is all forget data still
forgets, and an aggregate of a discovery node and an unrelated model is unlearned alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fiun_peer.core.fiun import FisherError, FIUnSettings, center_head, dampen, fiun_update
from fiun_peer.core.umig import RELATIONS
from simulations import cli
from simulations.centralized import SimConfig, evaluate, prepare, run_fiun
from simulations.data import load_dataset
from simulations.topology import RANDOM_MAX_DEPTH, TopologyError, assign_data, random_lineage, to_umig

SEEDS = range(60)


# -- the generator -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_y():
    return load_dataset("digits", seed=0).y_train


@pytest.mark.parametrize("seed", SEEDS)
def test_random_lineage_is_valid_and_fits_the_data(seed, digits_y):
    nodes = random_lineage(seed)
    g = to_umig(nodes)
    assert 6 <= len(nodes) <= 16
    roots = [n for n in nodes if not n.parents]
    assert 1 <= len(roots) <= 3
    assert all(set(r.labels) == set(range(10)) for r in roots)
    desc = [n for n in nodes if n.parents]
    assert all(2 <= len(n.labels) <= 5 for n in desc)
    assert all(n.relation in RELATIONS for n in desc)
    if len(desc) >= len(RELATIONS):
        assert {n.relation for n in desc} == set(RELATIONS)
    assert all(len(n.parents) >= 2 for n in desc if n.relation == "aggregate")
    assert max(g.depth(n.id) for n in nodes) <= RANDOM_MAX_DEPTH
    idx = assign_data(nodes, digits_y, seed)  # raises if the shares of a label overflow
    assert all(len(idx[n.id]) > 0 for n in nodes)


def test_random_lineage_is_deterministic_by_seed():
    assert random_lineage(7) == random_lineage(7)
    assert random_lineage(7, nodes=12) == random_lineage(7, nodes=12)
    assert len({tuple(random_lineage(s)) for s in range(20)}) == 20


def test_random_lineages_cover_multi_root_imbalanced_and_deep_cases():
    multi_root = imbalanced = deep = 0
    for s in SEEDS:
        nodes = random_lineage(s)
        g = to_umig(nodes)
        roots = {n.id for n in nodes if not n.parents}
        for n in nodes:
            anc_roots = roots & set(g.ancestors(n.id))
            multi_root += len(anc_roots) >= 2
            if len(n.parents) >= 2 and len({g.depth(p) for p in n.parents}) > 1:
                imbalanced += 1
        deep += max(g.depth(n.id) for n in nodes) >= 6
    assert multi_root > 0 and imbalanced > 0 and deep > 0, (multi_root, imbalanced, deep)


def test_random_lineage_nodes_and_bounds():
    assert len(random_lineage(3, nodes=6)) == 6
    assert len(random_lineage(3, nodes=16)) == 16
    for bad in (5, 17):
        with pytest.raises(TopologyError, match="6-16"):
            random_lineage(3, nodes=bad)


# -- the core: which rows Eq. 6 may select, and the gauge -----------------------------------------------


def test_dampen_rows_limits_the_selection_to_those_rows():
    w = torch.ones(3, 2)
    f = torch.zeros(3, 2)          # the model Fisher is 0 everywhere: every row would be selected
    fm = torch.ones(3, 2)
    assert torch.equal(dampen({"w": w}, {"w": f}, {"w": fm}, eta=0.0)["w"], torch.zeros(3, 2))
    out = dampen({"w": w}, {"w": f}, {"w": fm}, eta=0.0, rows=[1])["w"]
    assert torch.equal(out, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(FisherError, match="outside the head"):
        dampen({"w": w}, {"w": f}, {"w": fm}, rows=[3])


def test_center_head_on_the_retained_rows_puts_a_zeroed_row_at_their_mean():
    w = torch.tensor([[4.0, 0.0], [1.0, 1.0], [-1.0, 3.0]])
    c = center_head({"weight": w}, exclude=[0])["weight"]
    assert torch.equal(c[1:].mean(0), torch.zeros(2))      # retained rows are zero-mean
    h = torch.tensor([0.5, 2.0])
    # Differences between logits (the prediction) are unchanged by the gauge.
    assert torch.allclose((c @ h) - (c @ h)[1], (w @ h) - (w @ h)[1])
    # All rows excluded: fall back to the plain mean instead of dividing by nothing.
    assert torch.equal(center_head({"weight": w}, exclude=[0, 1, 2])["weight"], center_head({"weight": w})["weight"])


def test_defaults_restrict_to_forget_rows_and_paper_does_not():
    assert FIUnSettings().rows == "forget" and FIUnSettings.paper().rows == "all"
    with pytest.raises(ValueError, match="unknown rows"):
        FIUnSettings(rows="some")
    p = {"weight": torch.ones(2, 2), "bias": torch.ones(2)}
    mf = {k: torch.zeros_like(v) for k, v in p.items()}
    with pytest.raises(FisherError, match="forget labels"):
        fiun_update(p, mf, [{k: torch.ones_like(v) for k, v in p.items()}], FIUnSettings())


def test_a_forgotten_row_loses_to_the_retained_classes_after_fiun():
    # Four classes, forget 0 and 1 (half the head): with the old all-class gauge the zeroed rows sit
    # at the mean of *all* logits and can still win; in the retained-class gauge they cannot.
    w = torch.tensor([[6.0, 0.0], [5.0, 0.0], [-3.0, 0.0], [-4.0, 0.0]])
    p = {"weight": w, "bias": torch.zeros(4)}
    zero = {k: torch.zeros_like(v) for k, v in p.items()}
    fm = {k: torch.ones_like(v) for k, v in p.items()}
    h = torch.tensor([1.0, 0.0])
    new = fiun_update(p, zero, [fm], FIUnSettings(), forget_labels=[0, 1])
    assert int((new["weight"] @ h + new["bias"]).argmax()) in (2, 3)
    old_gauge = fiun_update(center_head(p), zero, [fm], replace(FIUnSettings(), center=False), forget_labels=[0, 1])
    assert int((old_gauge["weight"] @ h + old_gauge["bias"]).argmax()) in (0, 1)


# -- edge cases on trained models ------------------------------------------------------------------------

NARROW = {"nodes": [  # the narrow.json
    {"id": "base", "parents": [], "labels": list(range(10)), "share": 0.5, "epochs": 30},
    {"id": "ft1", "parents": ["base"], "relation": "finetune", "labels": [0, 1, 3], "share": 0.15, "epochs": 5},
    {"id": "ft2", "parents": ["ft1"], "relation": "finetune", "labels": [4, 5], "share": 0.15, "epochs": 5},
    {"id": "tr", "parents": ["base"], "relation": "transfer", "labels": [6, 7, 8], "share": 0.15, "epochs": 10},
]}
ALL_FORGET = {"nodes": [  # a discovery node whose own data is entirely forget data
    {"id": "base", "parents": [], "labels": list(range(10)), "share": 0.5, "epochs": 30},
    {"id": "only2", "parents": ["base"], "relation": "finetune", "labels": [2], "share": 0.4, "epochs": 3},
]}
UNRELATED = {"nodes": [  # an aggregate of a discovery node and a model that never saw the label
    {"id": "left", "parents": [], "labels": [0, 1, 2, 3, 4], "share": 0.5, "epochs": 30},
    {"id": "right", "parents": [], "labels": [5, 6, 7, 8, 9], "share": 0.5, "epochs": 30},
    {"id": "agg", "parents": ["left", "right"], "relation": "aggregate", "labels": [0, 5, 6], "share": 0.3,
     "epochs": 3},
]}


def _run(tmp_path, topo: dict, forget: tuple[int, ...], settings: FIUnSettings, stage=None):
    path = tmp_path / "topo.json"
    path.write_text(json.dumps(topo))
    stage = stage or prepare(SimConfig(framework=None, topology_file=str(path), forget=forget, seed=0))
    out = run_fiun(stage, forget, settings)
    return stage, {n: (evaluate(stage, stage.models[n], n, forget), evaluate(stage, m, n, forget))
                   for n, m in out["models"].items()}


def test_narrow_inherited_nodes_keep_what_they_inherited(tmp_path):
    stage, res = _run(tmp_path, NARROW, (2,), FIUnSettings())
    for n in ("ft1", "ft2", "tr"):
        orig, new = res[n]
        assert new["ad_f"] <= 1.0, (n, new)
        assert new["ad_r"] >= 0.95 * orig["ad_r"], (n, orig, new)
    # The same lineage under the settings before the fix: an inherited node loses what it inherited.
    _, old = _run(tmp_path, NARROW, (2,), replace(FIUnSettings(), rows="all", gamma=3.0), stage)
    assert min(new["ad_r"] / orig["ad_r"] for orig, new in (old[n] for n in ("ft1", "ft2", "tr"))) < 0.95


def test_discovery_node_whose_own_data_is_all_forget_data_still_forgets(tmp_path):
    _, res = _run(tmp_path, ALL_FORGET, (2,), FIUnSettings())
    orig, new = res["only2"]
    assert orig["ad_f"] > 50.0                          # it had learned its label
    assert new["ad_f"] <= 1.0 and new["ad_r"] >= 0.95 * orig["ad_r"], (orig, new)


def test_aggregate_of_a_discovery_node_and_an_unrelated_model(tmp_path):
    stage, res = _run(tmp_path, UNRELATED, (2,), FIUnSettings())
    assert set(res) == {"left", "agg"}                 # the unrelated root is outside the sub-graph
    assert stage.umig.discovery_ancestors("agg", (2,)) == ["left"]
    for n in ("left", "agg"):
        orig, new = res[n]
        assert new["ad_f"] <= 1.0 and new["ad_r"] >= 0.95 * orig["ad_r"], (n, orig, new)


# -- the CLI -----------------------------------------------------------------------------------------------


def test_cli_random_lineage(capsys):
    assert cli.main(["centralized", "--random-lineage", "3", "--nodes", "6", "--no-baselines", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "random lineage 3 (6 models)" in out and "r0" in out


def test_cli_nodes_needs_random_lineage(capsys):
    assert cli.main(["centralized", "--nodes", "6", "--quiet"]) == 2
    assert "--nodes needs --random-lineage" in capsys.readouterr().err
