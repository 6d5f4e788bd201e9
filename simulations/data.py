"""Data sets: scikit-learn's digits (real, ships with the package), a synthetic class-conditional
generator for many classes, CIFAR-100 from a local folder in its published python format, and,
built locally from the real digits for models that want colour images or text (nothing is
downloaded): ``digits32`` (3x32x32, 10 classes), ``cifar100-shaped`` (3x32x32, 100 classes, 25,000
samples) and ``tokens`` (a generated 10-class token task for text classifiers)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "synthetic", "cifar100", "digits32", "cifar100-shaped", "tokens")


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


def _digit_pools(seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _load

    d = _load()
    return _split(d.images.astype(np.float32) / 16.0, d.target.astype(np.int64), test_fraction, seed)


def _to_rgb32(images: np.ndarray, colours: np.ndarray, shifts: np.ndarray, rng: np.random.Generator,
              noise: float) -> np.ndarray:
    """8x8 digits (N x 8 x 8 in [0, 1]) upsampled 4x to 32x32, shifted, tinted and noised: N x 3 x 32 x 32."""
    big = np.kron(images, np.ones((4, 4), dtype=np.float32))            # nearest-neighbour 4x
    out = np.zeros((images.shape[0], 32, 32), dtype=np.float32)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = np.roll(big[i], (int(dy), int(dx)), axis=(0, 1))
    rgb = out[:, None, :, :] * colours[:, :, None, None]
    background = rng.uniform(0.0, 0.25, size=(images.shape[0], 3, 1, 1)).astype(np.float32)
    rgb = rgb + background * (1.0 - out[:, None, :, :])
    rgb += rng.normal(0.0, noise, size=rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def digits32(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """The 1,797 real digits as 3x32x32 colour images (10 classes: the digit), each upsampled 4x,
    shifted by up to 3 pixels and tinted with a random colour on a random dark background."""
    rng = np.random.default_rng(seed)
    xtr, xte, ytr, yte = _digit_pools(seed, test_fraction)
    out = []
    for x in (xtr, xte):
        colours = rng.uniform(0.4, 1.0, size=(x.shape[0], 3)).astype(np.float32)
        out.append(_to_rgb32(x, colours, rng.integers(-3, 4, size=(x.shape[0], 2)), rng, 0.05))
    return Dataset("digits32", torch.from_numpy(out[0]), torch.from_numpy(ytr), torch.from_numpy(out[1]),
                   torch.from_numpy(yte), 10)


#: Ten tints (RGB) for cifar100-shaped: class = digit + 10 * tint.
PALETTE = np.array([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.2, 0.3, 1.0], [1.0, 1.0, 0.15], [1.0, 0.2, 1.0],
                    [0.15, 1.0, 1.0], [1.0, 0.55, 0.1], [0.6, 0.25, 1.0], [0.95, 0.95, 0.95], [0.5, 0.8, 0.3]],
                   dtype=np.float32)


def cifar100_shaped(seed: int = 0, per_class: int = 250, test_fraction: float = 0.2) -> Dataset:
    """A CIFAR-100-shaped set built locally from the real digits: 3x32x32 images, 100 classes (digit
    x one of ten tints), ``per_class`` samples each (250: 20,000 train + 5,000 test). Every sample is
    a real digit (train samples from one half of the 1,797 digits, test samples from the other),
    upsampled 4x, shifted by up to 3 pixels, tinted with its class's colour (jittered), on a random
    dark background, with noise."""
    rng = np.random.default_rng(seed)
    pools = _digit_pools(seed, 0.5)
    n_test = int(round(per_class * test_fraction))
    parts = []
    for pool_x, pool_y, n in ((pools[0], pools[2], per_class - n_test), (pools[1], pools[3], n_test)):
        xs, ys = [], []
        for c in range(100):
            digit, tint = c % 10, c // 10
            idx = rng.choice(np.flatnonzero(pool_y == digit), size=n, replace=True)
            colours = np.clip(PALETTE[tint] + rng.normal(0.0, 0.08, size=(n, 3)), 0.05, 1.0).astype(np.float32)
            xs.append(_to_rgb32(pool_x[idx], colours, rng.integers(-3, 4, size=(n, 2)), rng, 0.05))
            ys.append(np.full(n, c, dtype=np.int64))
        order = rng.permutation(sum(len(y) for y in ys))
        parts.append((np.concatenate(xs)[order], np.concatenate(ys)[order]))
    (xtr, ytr), (xte, yte) = parts
    return Dataset("cifar100-shaped", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), 100)


#: tokens: vocabulary size, sequence length, and the ids below KEYWORDS_FROM are background words.
TOKEN_VOCAB, TOKEN_LENGTH, KEYWORDS_FROM = 64, 16, 24


def tokens(seed: int = 0, num_classes: int = 10, per_class: int = 200, test_fraction: float = 0.25) -> Dataset:
    """A generated text-classification task: sequences of up to 16 token ids (vocabulary 64, id 0
    is padding, 1 a [CLS] token first), mostly background words; class c places 2-4 of its own four
    keywords (ids 24 + 4c ... 24 + 4c + 3) at random positions, and one keyword of another class
    as a distractor half the time. Samples are x: int64 [N, 2, 16], input_ids and attention_mask
    stacked (a text model takes them as two named inputs)."""
    if not 2 <= num_classes <= (TOKEN_VOCAB - KEYWORDS_FROM) // 4:
        raise ValueError(f"tokens supports 2 to {(TOKEN_VOCAB - KEYWORDS_FROM) // 4} classes")
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    ids = np.zeros((n, TOKEN_LENGTH), dtype=np.int64)
    mask = np.zeros((n, TOKEN_LENGTH), dtype=np.int64)
    for i, c in enumerate(y):
        length = int(rng.integers(8, TOKEN_LENGTH + 1))
        ids[i, :length] = rng.integers(2, KEYWORDS_FROM, size=length)
        ids[i, 0] = 1
        spots = rng.choice(np.arange(1, length), size=int(rng.integers(2, 5)), replace=False)
        ids[i, spots] = KEYWORDS_FROM + 4 * c + rng.integers(0, 4, size=spots.size)
        if rng.random() < 0.5:
            other = (c + int(rng.integers(1, num_classes))) % num_classes
            free = [p for p in range(1, length) if p not in set(spots)]
            ids[i, int(rng.choice(free))] = KEYWORDS_FROM + 4 * other + int(rng.integers(0, 4))
        mask[i, :length] = 1
    x = np.stack([ids, mask], axis=1)
    xtr, xte, ytr, yte = _split(x, y, test_fraction, seed)
    return Dataset("tokens", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), num_classes)


def load_dataset(name: str, *, seed: int = 0, data_dir: str | None = None) -> Dataset:
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return synthetic(seed=seed)
    if name == "cifar100":
        if not data_dir:
            raise ValueError("--dataset cifar100 needs --data-dir pointing at cifar-100-python/")
        return load_cifar100(data_dir)
    if name == "digits32":
        return digits32(seed)
    if name == "cifar100-shaped":
        return cifar100_shaped(seed)
    if name == "tokens":
        return tokens(seed)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
