"""Last-layer Fisher estimators (Eqs. 3/4): hand-computed values, closed form vs torch.func vs a naive
per-sample autograd loop, and the model plumbing (head lookup, frozen backbone, train/eval mode)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fiun_peer.core.fisher import (
    ESTIMATORS,
    find_head,
    fisher_from_features,
    head_features,
    last_layer_fisher,
    per_sample_fisher,
)
from fiun_peer.models import build_model

DT = torch.float64


# ---------------------------------------------------------------------------------------------
# An independent reference: a naive per-sample autograd loop over a head module.
# ---------------------------------------------------------------------------------------------
def _grads(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy (= -mean ln p(y|x)) of (x, y) w.r.t. the head's params."""
    head.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(head(x), y)
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in head.named_parameters()}


def naive_fisher(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, estimator: str,
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    labels = torch.as_tensor(labels).long()
    n = feats.shape[0]
    acc = {k: torch.zeros_like(p) for k, p in head.named_parameters()}
    if estimator == "empirical":
        # mean over samples of the squared per-sample gradient
        for i in range(n):
            g = _grads(head, feats[i:i + 1], labels[i:i + 1])
            for k in acc:
                acc[k] += g[k] ** 2
        return {k: v / n for k, v in acc.items()}
    if estimator == "batch":
        # mean over mini-batches (in order) of the squared gradient of the batch-mean loss
        batches = 0
        for start in range(0, n, batch_size):
            g = _grads(head, feats[start:start + batch_size], labels[start:start + batch_size])
            for k in acc:
                acc[k] += g[k] ** 2
            batches += 1
        return {k: v / batches for k, v in acc.items()}
    assert estimator == "exact"
    # mean over samples of sum_c p_c * (grad of -ln p_c)^2
    for i in range(n):
        with torch.no_grad():
            probs = torch.softmax(head(feats[i:i + 1]), dim=1)[0]
        for c in range(probs.shape[0]):
            g = _grads(head, feats[i:i + 1], torch.tensor([c]))
            for k in acc:
                acc[k] += probs[c] * g[k] ** 2
    return {k: v / n for k, v in acc.items()}


def assert_fisher_close(a: dict, b: dict, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------------------------------
# Hand-computed tiny case: 3 samples, 2 features, 2 classes.
#   W = 0, b = [ln 3, 0]  =>  every sample has p = [3/4, 1/4]
#   x1 = [1, 2], y=0     x2 = [3, -1], y=1     x3 = [0, 2], y=0
#   H∘H: [1, 4], [9, 1], [0, 4]
#   E = p - onehot(y): x1 [-1/4, 1/4], x2 [3/4, -3/4], x3 [-1/4, 1/4]
#   E∘E (same in both classes): x1 1/16, x2 9/16, x3 1/16
# ---------------------------------------------------------------------------------------------
H = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]], dtype=DT)
Y = torch.tensor([0, 1, 0])
W0 = torch.zeros(2, 2, dtype=DT)
B0 = torch.tensor([math.log(3.0), 0.0], dtype=DT)


def test_hand_case_probabilities_are_as_assumed():
    p = torch.softmax(H @ W0.T + B0, dim=1)
    torch.testing.assert_close(p, torch.tensor([[0.75, 0.25]] * 3, dtype=DT))


def test_empirical_hand_computed():
    # F_W[c, d] = (1/3) Σ_n E²[n, c] H²[n, d]
    #   d=0: (1/16·1 + 9/16·9 + 1/16·0) / 3 = 82/48 = 41/24
    #   d=1: (1/16·4 + 9/16·1 + 1/16·4) / 3 = 17/48
    # F_b[c] = (1/16 + 9/16 + 1/16) / 3 = 11/48
    f = fisher_from_features(H, W0, B0, Y, estimator="empirical")
    torch.testing.assert_close(f["weight"], torch.tensor([[41 / 24, 17 / 48]] * 2, dtype=DT))
    torch.testing.assert_close(f["bias"], torch.tensor([11 / 48, 11 / 48], dtype=DT))


def test_exact_hand_computed():
    # p(1-p) = 3/4 · 1/4 = 3/16 for both classes, label-free.
    # mean H² = [(1+9+0)/3, (4+1+4)/3] = [10/3, 3]
    # F_W = 3/16 · [10/3, 3] = [10/16, 9/16];  F_b = [3/16, 3/16]
    f = fisher_from_features(H, W0, B0, Y, estimator="exact")
    torch.testing.assert_close(f["weight"], torch.tensor([[10 / 16, 9 / 16]] * 2, dtype=DT))
    torch.testing.assert_close(f["bias"], torch.tensor([3 / 16, 3 / 16], dtype=DT))
    # label-free: any labels give the same exact Fisher
    g = fisher_from_features(H, W0, B0, torch.tensor([1, 1, 1]), estimator="exact")
    assert_fisher_close(f, g)


def test_batch_hand_computed_two_batches():
    # batch_size=2: batches {x1, x2} and {x3}.
    # batch 1: G_W[0] = (-1/4·[1,2] + 3/4·[3,-1]) / 2 = [2, -5/4] / 2 = [1, -5/8];  G_W[1] = -G_W[0]
    #          G_b = mean E = [(−1/4 + 3/4)/2, ...] = [1/4, -1/4]
    #          squared: G_W² = [1, 25/64] (both rows), G_b² = [1/16, 1/16]
    # batch 2: G_W[0] = -1/4·[0, 2] = [0, -1/2]; squared [0, 1/4]; G_b = [-1/4, 1/4], squared 1/16
    # mean over 2 batches: F_W = [(1+0)/2, (25/64 + 16/64)/2] = [1/2, 41/128]; F_b = [1/16, 1/16]
    f = fisher_from_features(H, W0, B0, Y, estimator="batch", batch_size=2)
    torch.testing.assert_close(f["weight"], torch.tensor([[1 / 2, 41 / 128]] * 2, dtype=DT))
    torch.testing.assert_close(f["bias"], torch.tensor([1 / 16, 1 / 16], dtype=DT))


def test_batch_hand_computed_one_batch():
    # One batch of 3: G_W[0] = (-1/4·[1,2] + 3/4·[3,-1] - 1/4·[0,2]) / 3 = [2, -7/4] / 3 = [2/3, -7/12]
    # squared: [4/9, 49/144];  G_b[0] = (-1/4 + 3/4 - 1/4) / 3 = 1/12, squared 1/144
    expected_w = torch.tensor([[4 / 9, 49 / 144]] * 2, dtype=DT)
    expected_b = torch.tensor([1 / 144, 1 / 144], dtype=DT)
    for bs in (3, 64):
        f = fisher_from_features(H, W0, B0, Y, estimator="batch", batch_size=bs)
        torch.testing.assert_close(f["weight"], expected_w)
        torch.testing.assert_close(f["bias"], expected_b)


def test_batch_size_one_equals_empirical():
    # A mini-batch of one sample is the per-sample gradient.
    for w, b in ((W0, B0), (torch.randn(2, 2, dtype=DT, generator=torch.Generator().manual_seed(3)), None)):
        assert_fisher_close(fisher_from_features(H, w, b, Y, estimator="batch", batch_size=1),
                            fisher_from_features(H, w, b, Y, estimator="empirical"))


def _numpy_reference(h: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, estimator: str,
                     batch_size: int) -> dict[str, np.ndarray]:
    """Explicit loops in NumPy, written from the per-sample gradient d ln p(y|x)/dW[c,d] = (1[y=c]-p_c)h_d."""
    n, d = h.shape
    c = w.shape[0]
    logits = h @ w.T + b
    z = np.exp(logits - logits.max(1, keepdims=True))
    p = z / z.sum(1, keepdims=True)

    def grad_w(i: int, label: int) -> tuple[np.ndarray, np.ndarray]:
        gw = np.zeros((c, d))
        gb = np.zeros(c)
        for cc in range(c):
            r = (1.0 if cc == label else 0.0) - p[i, cc]
            gb[cc] = r
            for dd in range(d):
                gw[cc, dd] = r * h[i, dd]
        return gw, gb

    fw, fb = np.zeros((c, d)), np.zeros(c)
    if estimator == "empirical":
        for i in range(n):
            gw, gb = grad_w(i, y[i])
            fw += gw ** 2
            fb += gb ** 2
        return {"weight": fw / n, "bias": fb / n}
    if estimator == "exact":
        for i in range(n):
            for label in range(c):
                gw, gb = grad_w(i, label)
                fw += p[i, label] * gw ** 2
                fb += p[i, label] * gb ** 2
        return {"weight": fw / n, "bias": fb / n}
    nb = 0
    for s in range(0, n, batch_size):
        idx = range(s, min(n, s + batch_size))
        sw, sb = np.zeros((c, d)), np.zeros(c)
        for i in idx:
            gw, gb = grad_w(i, y[i])
            sw += gw
            sb += gb
        fw += (sw / len(idx)) ** 2
        fb += (sb / len(idx)) ** 2
        nb += 1
    return {"weight": fw / nb, "bias": fb / nb}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_closed_form_matches_numpy_loops_three_classes(estimator):
    rng = np.random.default_rng(7)
    h, w, b = rng.normal(size=(5, 2)), rng.normal(size=(3, 2)), rng.normal(size=3)
    y = np.array([0, 2, 1, 2, 0])
    ref = _numpy_reference(h, w, b, y, estimator, batch_size=2)
    got = fisher_from_features(torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(b),
                               torch.from_numpy(y), estimator=estimator, batch_size=2)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(got[k].numpy(), ref[k], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Closed form vs torch.func vs naive loop on a random Linear head.
# ---------------------------------------------------------------------------------------------
def _random_linear(d: int, c: int, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, c, bias=bias).to(DT)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_equals_torch_func_and_naive_loop(estimator, bias):
    head = _random_linear(6, 4, bias, seed=11)
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(13, 6, dtype=DT, generator=g) * 2
    labels = torch.randint(0, 4, (13,), generator=g)
    closed = fisher_from_features(feats, head.weight.detach(), None if head.bias is None else head.bias.detach(),
                                  labels, estimator=estimator, batch_size=5)
    generic = per_sample_fisher(head, feats, labels, estimator=estimator, batch_size=5)
    naive = naive_fisher(head, feats, labels, estimator, batch_size=5)
    assert set(closed) == ({"weight", "bias"} if bias else {"weight"})
    assert_fisher_close(closed, generic)
    assert_fisher_close(closed, naive)
    for v in closed.values():
        assert v.dtype == DT
        assert (v >= 0).all()


def test_estimators_differ_on_a_generic_case():
    head = _random_linear(3, 3, True, seed=2)
    feats = torch.randn(8, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    w, b = head.weight.detach(), head.bias.detach()
    outs = [fisher_from_features(feats, w, b, labels, estimator=e, batch_size=4)["weight"] for e in ESTIMATORS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(outs[i], outs[j])


def test_fisher_from_features_validates_inputs():
    w, b = W0, B0
    with pytest.raises(ValueError, match="unknown estimator"):
        fisher_from_features(H, w, b, Y, estimator="diag")
    with pytest.raises(ValueError, match="zero samples"):
        fisher_from_features(H[:0], w, b, Y[:0], estimator="empirical")
    with pytest.raises(ValueError, match="labels"):
        fisher_from_features(H, w, b, Y[:2], estimator="empirical")
    with pytest.raises(ValueError, match="labels must lie"):
        fisher_from_features(H, w, b, torch.tensor([0, 2, 1]), estimator="empirical")
    with pytest.raises(ValueError, match="labels must lie"):
        fisher_from_features(H, w, b, torch.tensor([0, -1, 1]), estimator="empirical")
    with pytest.raises(ValueError, match="do not fit"):
        fisher_from_features(torch.ones(3, 5, dtype=DT), w, b, Y, estimator="empirical")
    with pytest.raises(ValueError, match="batch_size"):
        fisher_from_features(H, w, b, Y, estimator="batch", batch_size=0)
    with pytest.raises(ValueError, match="1-D"):
        fisher_from_features(H, w, b, Y[:, None], estimator="empirical")


def test_fisher_from_features_does_not_mutate_inputs():
    h, w, b, y = H.clone(), W0.clone(), B0.clone(), Y.clone()
    for e in ESTIMATORS:
        fisher_from_features(h, w, b, y, estimator=e, batch_size=2)
    assert torch.equal(h, H) and torch.equal(w, W0) and torch.equal(b, B0) and torch.equal(y, Y)


# ---------------------------------------------------------------------------------------------
# last_layer_fisher on the model zoo: frozen backbone, head only, mode untouched.
# ---------------------------------------------------------------------------------------------
def _backbone(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's input, computed from the zoo model's own submodules (not via a hook)."""
    if hasattr(model, "features"):
        return model.features(x)
    return model.pool(model.blocks(model.stem(x)))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_last_layer_fisher_on_zoo_equals_naive_loop(name, estimator):
    model = build_model(name, (1, 8, 8), 10, seed=3).to(DT)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(7, 1, 8, 8, dtype=DT, generator=g)
    y = torch.randint(0, 10, (7,), generator=g)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = last_layer_fisher(model, x, y, estimator=estimator, batch_size=3)
    assert model.training
    assert all(m.training for m in model.modules())
    # frozen: weights and BatchNorm running statistics are untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    with torch.no_grad():
        feats = _backbone(model, x)
    ref = naive_fisher(model.head, feats, y, estimator, batch_size=3)
    assert set(got) == {"weight", "bias"}
    assert got["weight"].shape == model.head.weight.shape
    assert_fisher_close(got, ref)


def test_last_layer_fisher_keeps_eval_mode():
    model = build_model("resnet", (1, 8, 8), 10, seed=0)
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    last_layer_fisher(model, x, torch.tensor([0, 1, 2, 3]), estimator="empirical")
    assert not any(m.training for m in model.modules())


def test_last_layer_fisher_keeps_mixed_modes():
    # Fine-tuning with frozen BatchNorm: the model trains but one BN layer is in eval mode.
    model = build_model("resnet", (1, 8, 8), 10, seed=0)
    model.train()
    model.stem[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    last_layer_fisher(model, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), estimator="exact")
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_head_features_chunking_and_head_argument_forms():
    model = build_model("cnn", (1, 8, 8), 10, seed=1).to(DT)
    x = torch.rand(7, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ref = _backbone(model, x)
    for head in (None, "head", model.head):
        torch.testing.assert_close(head_features(model, x, head, chunk=2), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not a submodule"):
        head_features(model, x, nn.Linear(128, 10))


class _TanhHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4, 3), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_non_linear_head_uses_generic_path_and_matches_naive_loop(estimator):
    torch.manual_seed(0)
    model = _TanhHeadNet().to(DT)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(9, 5, dtype=DT, generator=g)
    y = torch.randint(0, 3, (9,), generator=g)
    got = last_layer_fisher(model, x, y, estimator=estimator, batch_size=4, head=model.head)
    by_name = last_layer_fisher(model, x, y, estimator=estimator, batch_size=4, head="head")
    with torch.no_grad():
        feats = model.body(x)
    ref = naive_fisher(model.head, feats, y, estimator, batch_size=4)
    assert set(got) == {"0.weight", "0.bias"}
    assert_fisher_close(got, ref)
    assert_fisher_close(by_name, ref)
    # without head=, the last nn.Linear (head.0) is used in closed form on its own input: a different Fisher
    default = last_layer_fisher(model, x, y, estimator=estimator, batch_size=4)
    assert set(default) == {"weight", "bias"}
    assert not torch.allclose(default["weight"], got["0.weight"])


def test_find_head_and_errors():
    model = _TanhHeadNet()
    name, mod = find_head(model)
    assert name == "head.0" and mod is model.head[0]
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown estimator"):
        last_layer_fisher(model, torch.randn(2, 5), torch.tensor([0, 1]), estimator="fisher")
    with pytest.raises(ValueError, match="unknown estimator"):
        per_sample_fisher(model.head, torch.randn(2, 4), torch.tensor([0, 1]), estimator="fisher")
