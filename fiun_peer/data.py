"""Data sets: scikit-learn's digits (real, ships with the package), a synthetic class-conditional
generator for many classes, and CIFAR-100 from a local folder in its published python format."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "synthetic", "cifar100")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/test split with a seed, so every class appears in both halves."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, as 1x8x8 images scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    xtr, xte, ytr, yte = _split(x, d.target.astype(np.int64), test_fraction, seed)
    return Dataset("digits", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), 10)


def synthetic(num_classes: int = 100, per_class: int = 60, image_size: int = 8, seed: int = 0,
              test_fraction: float = 0.25, noise: float = 0.6) -> Dataset:
    """Class-conditional Gaussian images: each class has its own mean pattern, plus noise."""
    if num_classes < 2 or per_class < 2:
        raise ValueError("synthetic data needs at least 2 classes and 2 samples per class")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, size=(num_classes, 1, image_size, image_size)).astype(np.float32)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    x = means[y] + rng.normal(0.0, noise, size=(y.shape[0], 1, image_size, image_size)).astype(np.float32)
    xtr, xte, ytr, yte = _split(x, y, test_fraction, seed)
    return Dataset("synthetic", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), num_classes)


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-100 python file (cannot unpickle it: {exc})") from exc
    if not isinstance(entry, dict):
        raise ValueError(f"{path} is not a CIFAR-100 python file (expected a dict, got {type(entry).__name__})")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"fine_labels", entry.get("fine_labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-100 python file (needs 'data' and 'fine_labels')")
    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: 'data' must be N x 3072 uint8 and 'fine_labels' integers ({exc})") from exc
    if data.dtype != np.uint8:
        # np.asarray(..., dtype=np.uint8) would silently wrap out-of-range integers.
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"{path}: 'data' must be N x 3072 uint8, got dtype {data.dtype}")
        data = data.astype(np.uint8)
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'fine_labels' must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be N x 3072 uint8, got {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but 'fine_labels' has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise ValueError(f"{path}: 'fine_labels' must lie in [0, 100), got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def load_cifar100(folder: str | Path) -> Dataset:
    """CIFAR-100 from a local folder in the published python format (``train`` and ``test`` pickles,
    as in cifar-100-python/). Nothing is downloaded."""
    folder = Path(folder)
    files = {name: folder / name for name in ("train", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-100 files not found: {', '.join(missing)} "
                                "(expected the 'cifar-100-python' folder with 'train' and 'test')")
    xtr, ytr = _read_cifar_file(files["train"])
    xte, yte = _read_cifar_file(files["test"])
    return Dataset("cifar100", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), 100)


def load_dataset(name: str, *, seed: int = 0, data_dir: str | None = None) -> Dataset:
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return synthetic(seed=seed)
    if name == "cifar100":
        if not data_dir:
            raise ValueError("--dataset cifar100 needs --data-dir pointing at cifar-100-python/")
        return load_cifar100(data_dir)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
