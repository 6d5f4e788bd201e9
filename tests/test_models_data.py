"""The model zoo (head lookup, seeded construction) and the data loaders (digits, synthetic, CIFAR-100
from a local folder the test writes in the published python format)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fiun_peer.core.fisher import find_head
from fiun_peer.models import MODELS, build_model, head_name
from simulations.data import load_cifar100, load_dataset, load_digits, synthetic


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_zoo_head_is_last_linear_named_head(name):
    model = build_model(name, (1, 8, 8), 10, seed=0)
    found_name, head = find_head(model)
    assert found_name == "head" and head_name(model) == "head"
    assert head is model.head and isinstance(head, nn.Linear)
    assert head.out_features == 10
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1] is head
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10)
    # the head is really the last layer: its output is the model's output
    captured = []
    hook = head.register_forward_hook(lambda _m, _a, o: captured.append(o))
    with torch.no_grad():
        out = model(torch.rand(2, 1, 8, 8))
    hook.remove()
    assert torch.equal(captured[0], out)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights(name):
    a = build_model(name, (1, 8, 8), 10, seed=5).state_dict()
    b = build_model(name, (1, 8, 8), 10, seed=5).state_dict()
    c = build_model(name, (1, 8, 8), 10, seed=6).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn", (1, 8, 8), 10, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_build_model_errors_and_shapes():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", (1, 8, 8), 10, seed=0)
    for name in ("cnn", "resnet"):
        with pytest.raises(ValueError, match="image input"):
            build_model(name, (64,), 10, seed=0)
    mlp = build_model("mlp", (64,), 120, seed=0)
    assert mlp(torch.rand(2, 64)).shape == (2, 120)
    cnn = build_model("cnn", (3, 32, 32), 100, seed=0)
    assert cnn(torch.rand(2, 3, 32, 32)).shape == (2, 100)


# ---------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------
def _rows_sorted(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1)
    return flat[np.lexsort(flat.T[::-1])]


def test_load_digits_split():
    from sklearn.datasets import load_digits as sk_digits

    d = load_digits(seed=0)
    assert d.name == "digits" and d.num_classes == 10
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert d.input_shape == (1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    for x in (d.x_train, d.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(d.x_train.max()) == 1.0  # 16/16 occurs
    # the split is a partition of the 1,797 real images (scaled by 1/16)
    ref = sk_digits()
    allx = torch.cat([d.x_train, d.x_test]).numpy()
    np.testing.assert_array_equal(_rows_sorted(allx), _rows_sorted(ref.images.astype(np.float32) / 16.0))
    ally = torch.cat([d.y_train, d.y_test]).numpy()
    np.testing.assert_array_equal(np.bincount(ally, minlength=10), np.bincount(ref.target, minlength=10))
    # stratified: every class's test share is 25% of its total, within one sample
    tr = np.bincount(d.y_train.numpy(), minlength=10)
    te = np.bincount(d.y_test.numpy(), minlength=10)
    assert (te > 0).all() and (tr > 0).all()
    assert (np.abs(te - 0.25 * (tr + te)) <= 1).all()


def test_load_digits_deterministic_per_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.y_test, c.y_test) or not torch.equal(a.x_test, c.x_test)
    assert torch.equal(load_dataset("digits", seed=3).x_train, a.x_train)


# ---------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------
def test_synthetic_many_classes():
    d = synthetic(num_classes=120, per_class=8, seed=1)
    assert d.num_classes == 120 and d.name == "synthetic"
    assert set(d.y_train.tolist()) == set(range(120)) and set(d.y_test.tolist()) == set(range(120))
    assert d.x_train.shape == (720, 1, 8, 8) and d.x_test.shape == (240, 1, 8, 8)
    assert d.x_train.dtype == torch.float32
    assert (torch.bincount(d.y_test, minlength=120) == 2).all()
    again = synthetic(num_classes=120, per_class=8, seed=1)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_train, d.y_train)
    other = synthetic(num_classes=120, per_class=8, seed=2)
    assert not torch.equal(other.x_train, d.x_train)
    assert synthetic(num_classes=5, per_class=4, image_size=6).input_shape == (1, 6, 6)


def test_synthetic_classes_are_separable_by_their_means():
    # class-conditional: a nearest-class-mean classifier fit on train beats chance by far
    d = synthetic(num_classes=20, per_class=20, seed=0, noise=0.6)
    xtr, xte = d.x_train.flatten(1), d.x_test.flatten(1)
    means = torch.stack([xtr[d.y_train == c].mean(0) for c in range(20)])
    pred = torch.cdist(xte, means).argmin(1)
    assert (pred == d.y_test).float().mean() > 0.8


def test_synthetic_rejects_degenerate_sizes():
    with pytest.raises(ValueError):
        synthetic(num_classes=1)
    with pytest.raises(ValueError):
        synthetic(per_class=1)


# ---------------------------------------------------------------------------------------------
# CIFAR-100 in its published python format
# ---------------------------------------------------------------------------------------------
def _write_cifar(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[0, 0], data[0, 1] = 0, 255  # both ends of the range
        fine = rng.integers(0, 100, size=n).tolist()
        entry = {b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        out[name] = (data, fine)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}))
    return out


def test_load_cifar100_reads_published_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    written = _write_cifar(folder)
    d = load_cifar100(folder)
    assert d.name == "cifar100" and d.num_classes == 100
    assert d.x_train.shape == (5, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.input_shape == (3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        data, fine = written[split]
        assert y.tolist() == fine
        # row-major N x 3072 = 1024 red, 1024 green, 1024 blue, each 32 x 32
        expected = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        np.testing.assert_array_equal(x.numpy(), expected)
        assert float(x[0, 0, 0, 0]) == 0.0 and float(x[0, 0, 0, 1]) == 1.0
        assert float(x[1, 1, 0, 0]) == pytest.approx(data[1, 1024] / 255.0, rel=1e-6)  # image 1, first green
        assert float(x[1, 2, 31, 31]) == pytest.approx(data[1, 3071] / 255.0, rel=1e-6)  # last blue pixel
    assert torch.equal(load_dataset("cifar100", data_dir=str(folder)).x_test, d.x_test)


def test_load_cifar100_accepts_str_keys(tmp_path):
    data = np.full((2, 3072), 51, dtype=np.uint8)
    for name in ("train", "test"):
        (tmp_path / name).write_bytes(pickle.dumps({"data": data, "fine_labels": [3, 99]}))
    d = load_cifar100(str(tmp_path))
    assert d.y_test.tolist() == [3, 99]
    assert torch.allclose(d.x_train, torch.full((2, 3, 32, 32), 0.2))


def test_load_cifar100_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar100(tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "cifar-100-python" in msg and "train" in msg and "test" in msg
    # only the test file missing: named in the message
    folder = tmp_path / "half"
    _write_cifar(folder)
    (folder / "test").unlink()
    with pytest.raises(FileNotFoundError, match="test"):
        load_cifar100(folder)
    with pytest.raises(ValueError, match="data-dir"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def _good_test_entry() -> bytes:
    return pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})


@pytest.mark.parametrize("payload", [
    b"this is not a pickle",
    b"",
    pickle.dumps([1, 2, 3]),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),  # no fine_labels
    pickle.dumps({b"fine_labels": [0, 1]}),  # no data
    pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}),  # wrong width
    pickle.dumps({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"fine_labels": [0, 1]}),  # not 2-D
    pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1]}),  # count mismatch
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}),  # label range
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, -1]}),
    pickle.dumps({b"data": np.full((2, 3072), 300, np.int64), b"fine_labels": [0, 1]}),  # not uint8
    pickle.dumps({b"data": np.zeros((2, 3072), np.float32) + 0.5, b"fine_labels": [0, 1]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0.5, 1.0]}),
], ids=["garbage", "empty", "list", "no-labels", "no-data", "width", "ndim", "count", "label-high",
        "label-negative", "int64-overflow", "float-data", "float-labels"])
def test_load_cifar100_malformed_file(tmp_path, payload):
    (tmp_path / "train").write_bytes(payload)
    (tmp_path / "test").write_bytes(_good_test_entry())
    with pytest.raises(ValueError):
        load_cifar100(tmp_path)
