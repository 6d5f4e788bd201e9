"""The model zoo: any nn.Module whose last layer is an nn.Linear head works with FIUn."""

from __future__ import annotations

import math

import torch
from torch import nn

MODELS = ("mlp", "cnn", "resnet")


class MLP(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        d = 1
        for s in in_shape:
            d *= s
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 32) -> None:
        super().__init__()
        c = in_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(width * 2 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet-style net: stem, two residual blocks, global pooling, Linear head."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 32) -> None:
        super().__init__()
        c = in_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(_Block(width), _Block(width))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))))


def build_model(name: str, in_shape: tuple[int, ...], num_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised model; the same (name, shape, classes, seed) gives the same weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if name != "mlp" and len(in_shape) != 3:
        raise ValueError(f"model {name!r} needs image input (C, H, W), got shape {in_shape}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "mlp":
            return MLP(in_shape, num_classes)
        if name == "cnn":
            return SmallCNN(in_shape, num_classes)
        return SmallResNet(in_shape, num_classes)
    finally:
        torch.random.set_rng_state(gen_state)


def largest_output(name: str, in_shape: tuple[int, ...], num_classes: int) -> int:
    """Numbers in the largest layer output of a zoo model for one sample, without building it; a
    ValueError for inputs the model cannot take. (Running the model on torch's meta device would
    tell too, but its first call costs seconds of imports in every peer process.)
    tests/test_publish_checks.py checks these against a real forward pass."""
    if name == "mlp":
        return max(math.prod(in_shape), 128, num_classes)
    c, h, w = in_shape
    if name == "cnn":
        if h < 2 or w < 2:  # MaxPool2d(2) needs at least 2x2
            raise ValueError(f"the cnn needs images of at least 2x2 pixels, got {h}x{w}")
        return max(64 * h * w, 256, num_classes)
    if name == "resnet":
        return max(32 * h * w, num_classes)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def head_name(model: nn.Module) -> str:
    """The module name of the classification head (the last nn.Linear)."""
    from .core.fisher import find_head

    return find_head(model)[0]
