"""Issue 18 at the edges: the model Fisher (Eq. 4) a peer uses is that of the version it applies a
request to, cached per (version, settings), in the peer and in the centralized reference alike;
and the CLI's way of naming a parent version."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch
import trio

from fiun_peer.agent import Agent
from fiun_peer.cli import _parent
from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.identity import Identity
from fiun_peer.models import build_model
from fiun_peer.store import Store
from fiun_peer.tensors import to_bytes
from fiun_peer.unlearn import node_model_fisher

ARCH = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_model_fisher_is_that_of_the_version_asked_for(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, seed=0).eval()
    y = torch.arange(40) % 10
    x = torch.rand(len(y), 1, 8, 8)
    s = FIUnSettings()
    with Store(tmp_path) as store:
        agent = Agent(Identity.generate("me"), store, defaults=s)
        v1, _, _ = trio.run(functools.partial(
            agent.publish_model, model_id="m", weights=to_bytes(model.state_dict()), data=to_bytes({"x": x, "y": y}),
            parents=[], labels=[], architecture=ARCH, head_tensors=[]))
        published = agent.view.first["m"].predicate["model_fisher_digests"][s.model_fisher_key()]
        # A cache from before issue 18 (by settings alone, whatever version it was computed on) is not read.
        store.put_state("mf:m", {s.model_fisher_key(): published})

        f1 = trio.run(agent.models.model_fisher, "m", v1, s)
        assert _equal(f1, node_model_fisher(model, x, y, s))
        assert store.get_state(f"mf:m:{v1}") is None            # version 1's is the one its record names

        later = {k: v.clone() for k, v in model.state_dict().items()}
        later["head.weight"][2].zero_()                          # as unlearning label 2 leaves it
        v2 = store.put_blob(to_bytes(later), kind="weights")
        f2 = trio.run(agent.models.model_fisher, "m", v2, s)
        model.load_state_dict(later)
        assert _equal(f2, node_model_fisher(model, x, y, s)) and not _equal(f2, f1)
        cached = store.get_state(f"mf:m:{v2}")[s.model_fisher_key()]
        assert store.blob_kinds(cached) == {"model_fisher"}
        assert _equal(trio.run(agent.models.model_fisher, "m", v2, s), f2)   # from the cache

        other = FIUnSettings(estimator="exact")                  # other settings: per (version, settings)
        assert _equal(trio.run(agent.models.model_fisher, "m", v2, other), node_model_fisher(model, x, y, other))
        assert set(store.get_state(f"mf:m:{v2}")) == {s.model_fisher_key(), other.model_fisher_key()}


def test_the_reference_uses_the_current_versions_model_fisher_for_a_second_request() -> None:
    from simulations.centralized import Reference, SimConfig, prepare

    stage = prepare(SimConfig(framework="il", baselines=False))
    ref = Reference(stage, FIUnSettings())
    first = ref.apply("r1", (2,))
    second = ref.apply("r2", (3,))
    for n in ("g", "a", "b"):
        assert _equal(first["model_fishers"][n], node_model_fisher(stage.models[n], *ref.data[n], FIUnSettings()))
        assert _equal(second["model_fishers"][n], node_model_fisher(first["models"][n], *ref.data[n], FIUnSettings()))
        assert not _equal(second["model_fishers"][n], first["model_fishers"][n])
    assert ref.apply("r1", (2,))["subgraph"] == []              # applied once
    assert ref.umig.applied("b") == ["r1", "r2"]


@pytest.mark.parametrize("text,parsed", [
    ("b", ("b", "finetune", "", 0)),
    ("b:incremental", ("b", "incremental", "", 0)),
    ("b:incremental@v2", ("b", "incremental", "", 2)),
    ("b@v12", ("b", "finetune", "", 12)),
    ("b:distill@" + "0f" * 32, ("b", "distill", "0f" * 32, 0)),
])
def test_parents_name_a_version_by_digest_or_number(text: str, parsed: tuple) -> None:
    assert _parent(text) == parsed


@pytest.mark.parametrize("text", ["b@", "b@v0", "b@2", "b@vx", "b@" + "0F" * 32, "b@" + "0f" * 31, ":finetune"])
def test_a_malformed_parent_version_is_an_argument_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _parent(text)
