"""Bring your own model, end to end on real peer processes: a torchvision ResNet-18, a transformers
ViT image classifier (small config), a transformers BERT sequence classifier (tiny config, on the
generated token task) and a torch.export-ed custom nn.Module with BatchNorm and a ``classifier`` head,
each a fine-tune chain (a root on every label, a narrow child on labels 1-3) trained here, published
in its own format through its owner's admin API. Two requests, one after the other (the second
unlearns version 2, which the peers store as its head only): every new version, exported by its
owner, is torch.equal to the centralized reference, and nothing but Fishers crossed the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.formats import load
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.unlearn import apply_fiun_head, node_unlearning_fisher
from simulations import byom
from simulations.centralized import SimConfig, prepare, run_fiun
from simulations.network import publish_stage
from simulations.peers import PeerCluster

S = FIUnSettings()
MODELS = {"rn": "torchvision:resnet18", "vit": "hf-vit-tiny", "bert": "hf-bert-tiny", "bn": "torch-export:bn-cnn"}


def chain(tag: str, classes: int = 10) -> dict:
    """A narrow fine-tune: the child's own data holds labels 1-3 only, and it still predicts every class."""
    return {"nodes": [
        {"id": f"{tag}0", "parents": [], "labels": list(range(classes)), "share": 0.06, "epochs": 2},
        {"id": f"{tag}1", "parents": [f"{tag}0"], "relation": "finetune", "labels": [1, 2, 3], "share": 0.1,
         "epochs": 1}]}


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("topologies")
    out = {}
    for tag, name in MODELS.items():
        path = root / f"{tag}.json"
        path.write_text(json.dumps(chain(tag)))
        out[tag] = prepare(SimConfig(topology_file=str(path), model=name, dataset=byom.default_dataset(name),
                                     forget=(2,), seed=0, baselines=False))
    return out


def exported_state(peer, model_id: str, digest: str) -> tuple[str, dict[str, torch.Tensor]]:
    r = peer.admin.ExportModel(admin_pb2.ExportModelRequest(model_id=model_id, model_digest=digest), timeout=120)
    return r.format, byom.state_of(r.format, r.weights)


def assert_equal_states(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(want), what
    for k, v in want.items():
        assert torch.equal(got[k], v), f"{what}: {k} differs from the centralized reference"


def test_four_formats_publish_and_unlearn_bit_equal_to_the_reference(stages, tmp_path: Path) -> None:
    first = {tag: run_fiun(stage, (2,), S) for tag, stage in stages.items()}
    with PeerCluster(tmp_path, ["alice", "bob"]) as cluster:
        alice, bob = cluster.peers
        for stage in stages.values():       # roots on alice, narrow children on bob
            publish_stage(stage, {stage.nodes[0].id: alice, stage.nodes[1].id: bob}, timeout=180)
        owner = {s.nodes[0].id: alice for s in stages.values()} | {s.nodes[1].id: bob for s in stages.values()}
        for peer in cluster.peers:
            cluster.wait_lineage(peer, len(owner), timeout=120)
        lineage = {m.model_id: m for m in bob.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models}
        assert set(lineage) == set(owner)

        # Request 1: forget label 2 (every model holds it: all are discovery models).
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[2], request_id="f2"),
                                      timeout=30)
        done = cluster.wait_request(bob, "f2", timeout=300)
        cluster.wait_request(alice, "f2", timeout=120)
        v2 = {m.model_id: m.new_digest for m in done.models}
        assert set(v2) == set(owner)
        for tag, stage in stages.items():
            for spec in stage.nodes:
                fmt, state = exported_state(owner[spec.id], spec.id, v2[spec.id])
                assert fmt == byom.format_of(MODELS[tag])
                assert_equal_states(state, first[tag]["states"][spec.id], f"{spec.id} v2")

        # Request 2: forget label 3, applied to version 2 (stored head-only), again against the reference:
        # Eq. 3 on each version-2 model, F_j as published (Eq. 4 at publication), Eqs. 5-6 on version 2.
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[3], request_id="f3"),
                                      timeout=30)
        done = cluster.wait_request(alice, "f3", timeout=300)
        v3 = {m.model_id: (m.old_digest, m.new_digest) for m in done.models}
        assert {m: old for m, (old, _) in v3.items()} == v2
        for tag, stage in stages.items():
            current, fhat = {}, {}
            for spec in stage.nodes:
                pub, fields = stage.publication(spec.id)
                c = load(pub.spec, fields["weights"])
                c.set_head({k: first[tag]["states"][spec.id][k] for k in c.head_tensor_names()})
                current[spec.id] = (c, pub)
                fhat[spec.id] = node_unlearning_fisher(c, pub.inputs, pub.y, [3], S)
            for spec in stage.nodes:
                c, pub = current[spec.id]
                ancestors = stage.umig.discovery_ancestors(spec.id, (3,))
                head = apply_fiun_head(c, first[tag]["model_fishers"][spec.id], [fhat[a] for a in ancestors], S,
                                       forget_labels=[3])
                want = {**c.state_dict(), **head}
                _, state = exported_state(owner[spec.id], spec.id, v3[spec.id][1])
                assert_equal_states(state, want, f"{spec.id} v3")

        # Head-only versions: neither peer holds a whole version 2 or 3; only Fishers crossed the network.
        for peer in cluster.peers:
            held = {p.name for p in (peer.home / "blobs").glob("??/*")}
            assert not held & ({d for d in v2.values()} | {new for _, new in v3.values()})
        pulled = bob.admin.Status(admin_pb2.StatusRequest(), timeout=10).counters["fisher_bytes_pulled"]
        resnet_bytes = len(stages["rn"].publication("rn0")[1]["weights"])
        assert 0 < pulled < resnet_bytes / 20, (pulled, resnet_bytes)
