"""The model formats (fiun_peer.formats), in one process: each loads an owner's artifact without running
code from it, finds the head or refuses it with the reason, computes features that match the model's
own forward pass, writes the artifact again with a new head, and head-only versions rebuild to the
digest they were stored under. Real torchvision, transformers and torch.export; small models."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from fiun_peer import formats
from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.formats import bounds, pt2, tv_shim, versions
from fiun_peer.formats.base import FormatError
from fiun_peer.store import Store
from fiun_peer.tensors import to_bytes
from fiun_peer.unlearn import apply_fiun_head, node_model_fisher, node_unlearning_fisher
from simulations import byom

S = FIUnSettings()


def image_data(n: int = 24, shape: tuple[int, ...] = (1, 8, 8), classes: int = 10, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.arange(n) % classes


def data_bytes(x: torch.Tensor, y: torch.Tensor) -> bytes:
    return to_bytes({"x": x, "y": y})


def export_bytes(model: nn.Module, example: torch.Tensor, *, dynamic: bool = True) -> bytes:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    ep = torch.export.export(model.eval(), (example,), dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bn_cnn() -> tuple[nn.Module, bytes]:
    torch.manual_seed(0)
    model = byom.BNNet((1, 8, 8), 10).eval()
    return model, export_bytes(model, torch.rand(4, 1, 8, 8))


# -- torchvision beside the CPU torch ---------------------------------------------------------------------


def test_torchvision_imports_beside_the_cpu_torch_and_its_c_operators_fail_loudly() -> None:
    tv = tv_shim.import_torchvision()
    model = tv.models.get_model("resnet18", num_classes=10).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    if tv_shim.EXTENSION_LOADED is False:   # PyPI's CUDA build on a CPU torch: only the schemas exist
        assert tv_shim._SCHEMAS is not None
        with pytest.raises((NotImplementedError, RuntimeError)):
            torch.ops.torchvision.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    assert tv_shim.prepare_torchvision() is True   # idempotent


def test_the_cli_repeats_the_formats_and_bounds_it_cannot_import() -> None:
    from fiun_peer import cli

    assert cli.MODEL_FORMATS == formats.FORMATS
    assert cli.BOUNDS_TEXT == bounds.summary()
    assert cli.MAX_ARTIFACT_BYTES == bounds.MAX_ARTIFACT_BYTES
    assert (bounds.MAX_ARTIFACT_BYTES, bounds.MAX_MODEL_PARAMETERS) == (384 << 20, 134_217_728)


# -- each format: features, head, new head ------------------------------------------------------------------


def _roundtrip(pub: formats.Publication, artifact: bytes) -> None:
    """Features and logits of the prepared model and of a fresh load agree to the bit; a new head
    goes in, and the rebuilt artifact loads with that head."""
    c = pub.classifier
    feats = c.features(pub.inputs)
    assert torch.allclose(c.logits(pub.inputs), feats @ c.weight.T + c.bias, atol=1e-5)
    again = formats.load(pub.spec, artifact)
    assert torch.equal(again.features(pub.inputs), feats)
    head = apply_fiun_head(c, node_model_fisher(c, pub.inputs, pub.y, S),
                           [node_unlearning_fisher(c, pub.inputs, pub.y, [2], S)], S, forget_labels=[2])
    assert sorted(head) == sorted(c.head_tensor_names())
    assert not torch.equal(head[c.head_tensor_names()[0]], c.head_state()[c.head_tensor_names()[0]])
    again.set_head(head)
    rebuilt = formats.load(pub.spec, again.artifact())
    assert all(torch.equal(rebuilt.head_state()[k], v) for k, v in head.items())
    assert (rebuilt.logits(pub.inputs).argmax(1) == 2).sum() == 0     # label 2 is no longer predicted


def test_torch_export_program_with_batchnorm_and_a_classifier_head(bn_cnn) -> None:
    model, artifact = bn_cnn
    x, y = image_data()
    pub = formats.prepare("torch-export", artifact, None, data_bytes(x, y))
    assert pub.head_tensors == ["classifier.weight", "classifier.bias"]
    assert pub.architecture == {"format": "torch-export", "head": "classifier", "num_classes": 10}
    with torch.no_grad():
        assert torch.allclose(pub.classifier.features(x), model.embed(model.body(x)), atol=1e-6)
    _roundtrip(pub, artifact)


def test_torch_export_with_a_static_batch_runs_padded_chunks(bn_cnn) -> None:
    model, _ = bn_cnn
    artifact = export_bytes(model, torch.rand(4, 1, 8, 8), dynamic=False)
    x, y = image_data(10)                                   # 4 + 4 + 2 (padded to 4)
    pub = formats.prepare("torch-export", artifact, None, data_bytes(x, y))
    assert pub.spec["static_batch"] == 4 and pub.classifier.chunk == 4
    with torch.no_grad():
        assert torch.allclose(pub.classifier.features(x), model.embed(model.body(x)), atol=1e-6)


def test_torchvision_resnet18_head_is_fc() -> None:
    model = byom.build("torchvision:resnet18", (3, 32, 32), 10, seed=0).eval()
    x, y = image_data(8, (3, 32, 32))
    pub, fields = byom.publication("torchvision:resnet18", model, x, y)
    assert pub.head_tensors == ["fc.weight", "fc.bias"] and fields["format"] == "torchvision"
    with torch.no_grad():
        assert torch.allclose(pub.classifier.logits(x), model(x), atol=1e-5)
    _roundtrip(pub, fields["weights"])


@pytest.mark.parametrize("name", ["hf-vit-tiny", "hf-bert-tiny"])
def test_transformers_classifiers(name: str) -> None:
    from simulations.data import load_dataset

    ds = load_dataset(byom.default_dataset(name))
    model = byom.build(name, ds.input_shape, ds.num_classes, seed=0).eval()
    pub, fields = byom.publication(name, model, ds.x_train[:40], ds.y_train[:40])
    assert pub.head_tensors == ["classifier.weight", "classifier.bias"]
    assert pub.architecture["format"] == "hf" and "auto_map" not in fields["architecture_json"]
    with torch.no_grad():
        assert torch.allclose(pub.classifier.logits(pub.inputs), model(ds.x_train[:40]), atol=1e-5)
    _roundtrip(pub, fields["weights"])


# -- refusals --------------------------------------------------------------------------------------------


def refused(match: str, fmt: str, artifact: bytes, arch: object, data: bytes, **kw: object) -> None:
    with pytest.raises(FormatError, match=match):
        formats.prepare(fmt, artifact, arch, data, **kw)


def test_unknown_format_and_bad_head_names() -> None:
    x, y = image_data()
    refused("unknown model format", "onnx", b"x", None, data_bytes(x, y))
    refused("not a module name", "torchvision", b"x", None, data_bytes(x, y), head="fc; import os")


def test_a_pickle_is_refused_and_never_unpickled(tmp_path: Path, bn_cnn) -> None:
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "boom": Boom()}, buf)
    x, y = image_data()
    refused("pickle", "torch-export", buf.getvalue(), None, data_bytes(x, y))
    refused("not a valid safetensors", "torchvision", buf.getvalue(), {"name": "resnet18", "num_classes": 10},
            data_bytes(x, y))
    assert not marker.exists()


def _edit(artifact: bytes, name: str, change) -> bytes:
    """The archive with one entry (matched by suffix) rewritten by ``change(bytes) -> bytes``."""
    src = zipfile.ZipFile(io.BytesIO(artifact))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, change(data) if info.filename.endswith(name) else data)
    return out.getvalue()


def _json_edit(fn):
    def change(data: bytes) -> bytes:
        obj = json.loads(data)
        fn(obj)
        return json.dumps(obj).encode()
    return change


@pytest.mark.parametrize("case", ["use_pickle", "guards_code", "sympy", "custom_op", "extra_entry", "oversized"])
def test_a_program_that_would_run_code_is_refused_before_torch_reads_it(case: str, bn_cnn, tmp_path: Path) -> None:
    _, artifact = bn_cnn
    marker = tmp_path / "ran"
    evil = f"__import__('os').system('touch {marker}')"

    def first_weight(cfg):
        next(iter(cfg["config"].values()))["use_pickle"] = True

    def first_expr(prog):
        for _key, value, _parent in pt2._walk(prog):
            if isinstance(value, dict) and "expr_str" in value:
                value["expr_str"] = evil
                return
        raise AssertionError("no symbolic expression in the program")

    def first_target(prog):
        for key, _value, parent in pt2._walk(prog):
            if key == "target" and "inputs" in parent:
                parent["target"] = "torch.ops.evil.launch.default"
                return

    def grow(cfg):
        meta = next(iter(cfg["config"].values()))["tensor_meta"]
        meta["sizes"] = [{"as_int": 1 << 10} for _ in meta["sizes"]]   # 2^40 numbers in a 288-byte payload

    edits = {
        "use_pickle": ("_weights_config.json", _json_edit(first_weight), "pickle"),
        "guards_code": ("models/model.json", _json_edit(lambda p: p.__setitem__("guards_code", [evil])), "guards_code"),
        "sympy": ("models/model.json", _json_edit(first_expr), "symbolic expression"),
        "custom_op": ("models/model.json", _json_edit(first_target), "only ATen"),
        "oversized": ("_weights_config.json", _json_edit(grow), "does not fit its payload|weight numbers"),
    }
    if case == "extra_entry":
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(artifact)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
            dst.writestr(src.infolist()[0].filename.split("/")[0] + "/data.pkl", b"\x80\x04N.")
        bad, match = out.getvalue(), "pickle"
    else:
        entry, change, match = edits[case]
        bad = _edit(artifact, entry, change)
    x, y = image_data()
    refused(match, "torch-export", bad, None, data_bytes(x, y))
    assert not marker.exists()


def test_symbolic_expressions_only_take_harmless_tokens() -> None:
    pt2.check_expression("Symbol('s77', positive=True, integer=True)")
    pt2.check_expression("FloorDiv(s0, 2) + Max(1, s1*3)")
    for evil in ("__import__('os')", "s0.__class__", "open('x')", "lambda: 1", "s0; x", "'a' + 'b'"):
        with pytest.raises(FormatError):
            pt2.check_expression(evil)


def test_a_head_that_is_not_a_linear_layer_or_not_the_logits_is_refused() -> None:
    x, y = image_data(4, (3, 32, 32))

    def tv(name: str, **kw: object):
        model = byom.build(f"torchvision:{name}", (3, 32, 32), 10, seed=0)
        return to_bytes(model.state_dict()), {"name": name, "num_classes": 10}

    weights, arch = tv("mobilenet_v3_small")
    refused("not a Linear layer", "torchvision", weights, arch, data_bytes(x, y), head="avgpool")
    refused("does not produce the model's logits", "torchvision", weights, arch, data_bytes(x, y), head="classifier.0")
    refused("no submodule named", "torchvision", weights, arch, data_bytes(x, y), head="classifier.9")
    weights, arch = tv("squeezenet1_1")                     # its classifier is a 1x1 convolution
    refused("no Linear layer", "torchvision", weights, arch, data_bytes(x, y))

    class SoftmaxOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.classifier = nn.Flatten(), nn.Linear(64, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.classifier(self.body(t)), 1)

    x1, y1 = image_data()
    refused("not a Linear layer", "torch-export", export_bytes(SoftmaxOut(), x1[:4]), None, data_bytes(x1, y1))


def test_weights_and_data_that_do_not_fit_are_refused(bn_cnn) -> None:
    _, program = bn_cnn
    x, y = image_data(6, (3, 32, 32))
    model = byom.build("torchvision:resnet18", (3, 32, 32), 5, seed=0)
    weights, arch = to_bytes(model.state_dict()), {"name": "resnet18", "num_classes": 10}
    refused("fc.bias has shape \\[5\\], torchvision resnet18 needs \\[10\\]", "torchvision", weights, arch, data_bytes(x, y))
    refused("not a torchvision classification model", "torchvision", weights, {"name": "fasterrcnn_resnet50_fpn",
                                                                              "num_classes": 10}, data_bytes(x, y))
    arch5 = {"name": "resnet18", "num_classes": 5}
    refused("data does not fit the model", "torchvision", weights, arch5, data_bytes(*image_data(6, (1, 32, 32), 5)))
    refused("must be float32", "torchvision", weights, arch5, data_bytes(x.double(), y % 5))
    refused("labels must be in 0..4", "torchvision", weights, arch5, data_bytes(x, y))
    xi, yi = image_data()
    refused("takes \\[1, 8, 8\\]", "torch-export", program, None, data_bytes(torch.rand(6, 1, 4, 4), yi[:6]))
    refused("describes itself", "torch-export", program, {"name": "x"}, data_bytes(xi, yi))
    refused("holds NaN", "torch-export", program, None, data_bytes(torch.full_like(xi, float("nan")), yi))


def test_hf_refuses_remote_code_other_tasks_and_tokens_outside_the_vocabulary() -> None:
    from simulations.data import load_dataset

    ds = load_dataset("tokens")
    model = byom.build("hf-bert-tiny", ds.input_shape, 10, seed=0)
    pub, fields = byom.publication("hf-bert-tiny", model, ds.x_train[:10], ds.y_train[:10])
    config = json.loads(fields["architecture_json"])
    data = fields["data"]
    refused("remote code", "hf", fields["weights"], {**config, "auto_map": {"AutoModel": "evil.Model"}}, data)
    refused("not a transformers image or sequence classifier", "hf", fields["weights"],
            {**config, "architectures": ["BertForMaskedLM"]}, data)
    ids = ds.x_train[:10].clone()
    ids[3, 0, 1] = 64
    refused("must lie in 0..63", "hf", fields["weights"], config, byom.data_bytes("hf-bert-tiny", ids, ds.y_train[:10]))
    refused("takes text data", "hf", fields["weights"], config, data_bytes(*image_data()))


def test_size_bounds_are_checked_before_the_model_is_built(monkeypatch, bn_cnn) -> None:
    _, program = bn_cnn
    x, y = image_data(4, (3, 32, 32))
    monkeypatch.setattr(bounds, "MAX_ARTIFACT_BYTES", 1000)
    refused("more than the 1,000", "torch-export", program, None, data_bytes(x, y))
    monkeypatch.setattr(bounds, "MAX_ARTIFACT_BYTES", 384 << 20)
    monkeypatch.setattr(bounds, "MAX_MODEL_PARAMETERS", 1000)
    built = []
    from fiun_peer.formats import torchvision as tvf

    real_build = tvf._build
    monkeypatch.setattr(tvf, "_build", lambda arch, meta=False: built.append(meta) or real_build(arch, meta=meta))
    refused("parameters, more than the 1,000", "torchvision", b"\x00" * 64, {"name": "resnet18", "num_classes": 10},
            data_bytes(x, y))
    assert built == [True]                                  # counted on the meta device, never built for real


# -- head-only versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zoo", "torch-export"])
def test_head_only_versions_rebuild_to_their_digest(tmp_path: Path, fmt: str, bn_cnn) -> None:
    x, y = image_data()
    if fmt == "zoo":
        from fiun_peer.models import build_model

        artifact = to_bytes(build_model("mlp", (1, 8, 8), 10, seed=0).state_dict())
        arch = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}
    else:
        artifact, arch = bn_cnn[1], None
    pub = formats.prepare(fmt, artifact, arch, data_bytes(x, y))
    with Store(tmp_path) as store:
        v1 = store.put_blob(artifact, kind="weights")
        store.put_state("model:m", {"digest": v1, "original": v1, "version": 1})
        versions.remember(store, "m", pub.spec)
        c, digest, heads = pub.classifier, v1, []
        for forget in ([2], [5]):                             # version 2 from 1, version 3 from 2 (head-only)
            c = versions.load_version(store, "m", pub.architecture, digest)
            head = apply_fiun_head(c, node_model_fisher(c, pub.inputs, pub.y, S),
                                   [node_unlearning_fisher(c, pub.inputs, pub.y, forget, S)], S, forget_labels=forget)
            new = versions.new_version(c, head)
            versions.record(store, "m", new)
            digest = new.digest
            heads.append(head)
        assert versions.manifest(store, digest)["artifact"] == v1
        assert not store.has_blob(digest)                     # no whole version 3 on disk
        data = versions.read_artifact(store, "m", pub.architecture, digest)
        assert hashlib.sha256(data).hexdigest() == digest
        v3 = formats.load(pub.spec, data)
        assert all(torch.equal(v3.head_state()[k], v) for k, v in heads[-1].items())
        head_bytes = store.blob_size(versions.manifest(store, digest)["head"])
        assert head_bytes < len(artifact) / 10


def test_fiun_sim_export_format_names_the_model_to_train() -> None:
    from simulations.cli import model_in_format

    assert model_in_format("cnn", "torch-export") == "torch-export:cnn"
    assert model_in_format("torchvision:resnet18", "torch-export") == "torch-export:resnet18"
    assert model_in_format("torch-export:resnet18", "torchvision") == "torchvision:resnet18"
    assert model_in_format("mlp", "zoo") == "mlp" and model_in_format("hf-vit-tiny", "hf") == "hf-vit-tiny"
    for model, fmt in (("mlp", "torchvision"), ("hf-bert-tiny", "torch-export"), ("cnn", "hf"),
                       ("torchvision:resnet18", "zoo")):
        with pytest.raises(ValueError, match="cannot be written"):
            model_in_format(model, fmt)
