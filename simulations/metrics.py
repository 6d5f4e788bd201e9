"""Evaluation: accuracy on retained / forgotten labels (AD_r, AD_f) and a membership-inference
score on the forget set (entropy-feature logistic regression, as in the SSD code)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from fiun_peer.core.fiun import label_mask


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    model.eval()
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def probabilities(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    model.eval()
    return torch.cat([torch.softmax(model(x[i:i + chunk]), 1) for i in range(0, x.shape[0], chunk)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float | None:
    """Percentage correct; None when there are no samples (reported as n/a)."""
    if x.shape[0] == 0:
        return None
    return float((predict(model, x) == y).float().mean()) * 100.0


def split_by_labels(x: Tensor, y: Tensor, labels: Iterable[int]) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((x, y) with labels in ``labels``, (x, y) without)."""
    m = label_mask(y, labels)
    return (x[m], y[m]), (x[~m], y[~m])


def _entropy(p: Tensor) -> np.ndarray:
    return (-(p * torch.log(p.clamp_min(1e-12))).sum(1)).numpy().reshape(-1, 1)


def mia_score(model: nn.Module, retain_x: Tensor, test_x: Tensor, forget_x: Tensor) -> float | None:
    """Fraction of forget samples a member/non-member attack calls "member" (in %; lower is better,
    the re-trained model is the target). The attack is a logistic regression on output entropy,
    fitted on retained training samples (members) vs held-out test samples (non-members)."""
    from sklearn.linear_model import LogisticRegression

    if min(retain_x.shape[0], test_x.shape[0], forget_x.shape[0]) == 0:
        return None
    xr = np.concatenate([_entropy(probabilities(model, retain_x)), _entropy(probabilities(model, test_x))])
    yr = np.concatenate([np.ones(retain_x.shape[0]), np.zeros(test_x.shape[0])])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(xr, yr)
    return float(clf.predict(_entropy(probabilities(model, forget_x))).mean()) * 100.0
