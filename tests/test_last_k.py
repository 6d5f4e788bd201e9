"""Fisher over the last k layers (simulations/last_k.py, the paper's Fig. 9 variant): layer lookup, k = 1
equals the closed form at any temperature, k > 1 equals a naive per-sample autograd loop, and the
model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fiun_peer.core.fisher import ESTIMATORS, fisher_from_features, head_features
from fiun_peer.models import build_model
from simulations.last_k import last_k_fisher, last_k_parameter_names, parameter_layers

DT = torch.float64


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, dtype=DT, generator=g), torch.randint(0, 10, (n,), generator=g)


def naive_last_k(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], estimator: str,
                 temperature: float, batch_size: int) -> dict[str, torch.Tensor]:
    """Textbook loops with autograd: per-sample (or per-batch) gradients of -ln softmax(z/T)_y, times T."""
    params = dict(model.named_parameters())

    def grads(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = nn.functional.cross_entropy(model(xb) / temperature, yb)
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        return {n: g * temperature for n, g in zip(names, gs, strict=True)}

    acc = {n: torch.zeros_like(params[n]) for n in names}
    model.eval()
    if estimator == "batch":
        starts = range(0, x.shape[0], batch_size)
        for s in starts:
            g = grads(x[s:s + batch_size], y[s:s + batch_size])
            for n in names:
                acc[n] += g[n] ** 2
        return {n: v / len(starts) for n, v in acc.items()}
    for i in range(x.shape[0]):
        if estimator == "empirical":
            g = grads(x[i:i + 1], y[i:i + 1])
            for n in names:
                acc[n] += g[n] ** 2
        else:
            with torch.no_grad():
                p = torch.softmax(model(x[i:i + 1]) / temperature, 1)[0]
            for c in range(p.shape[0]):
                g = grads(x[i:i + 1], torch.tensor([c]))
                for n in names:
                    acc[n] += p[c] * g[n] ** 2
    return {n: v / x.shape[0] for n, v in acc.items()}


def test_layers_and_names_of_the_zoo():
    mlp = build_model("mlp", (1, 8, 8), 10, seed=0)
    assert parameter_layers(mlp) == ["features.1", "features.3", "head"]
    assert last_k_parameter_names(mlp, 1) == ["head.weight", "head.bias"]
    assert last_k_parameter_names(mlp, 2) == ["features.3.weight", "features.3.bias", "head.weight", "head.bias"]
    cnn = build_model("cnn", (1, 8, 8), 10, seed=0)
    assert parameter_layers(cnn) == ["features.0", "features.2", "features.7", "head"]
    assert len(last_k_parameter_names(cnn, 4)) == 8
    for k in (0, 4):
        with pytest.raises(ValueError, match=r"k must lie in \[1, 3\]"):
            last_k_parameter_names(mlp, k)


K1_CASES = [("mlp", e, t) for e in ESTIMATORS for t in (1.0, 4.0)] + [("cnn", "empirical", 4.0), ("cnn", "exact", 1.0)]


@pytest.mark.parametrize(("name", "estimator", "temperature"), K1_CASES)
def test_k1_equals_the_closed_form(name, estimator, temperature):
    model = build_model(name, (1, 8, 8), 10, seed=1).to(DT)
    x, y = _data(11, seed=2)
    got = last_k_fisher(model, x, y, 1, estimator=estimator, temperature=temperature, batch_size=4, chunk=5)
    ref = fisher_from_features(head_features(model, x), model.head.weight.detach(), model.head.bias.detach(), y,
                               estimator=estimator, temperature=temperature, batch_size=4)
    assert set(got) == {"head.weight", "head.bias"}
    torch.testing.assert_close(got["head.weight"], ref["weight"], rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(got["head.bias"], ref["bias"], rtol=1e-9, atol=1e-14)


DEEP_CASES = [("mlp", 2, 1.0, e) for e in ESTIMATORS] + [("mlp", 3, 4.0, "empirical"), ("cnn", 4, 2.0, "empirical"),
                                                          ("cnn", 4, 2.0, "batch")]


@pytest.mark.parametrize(("name", "k", "temperature", "estimator"), DEEP_CASES)
def test_k_layers_equal_a_naive_autograd_loop(name, k, temperature, estimator):
    model = build_model(name, (1, 8, 8), 10, seed=3).to(DT)
    x, y = _data(6, seed=4)
    names = last_k_parameter_names(model, k)
    got = last_k_fisher(model, x, y, k, estimator=estimator, temperature=temperature, batch_size=4, chunk=4)
    ref = naive_last_k(model, x, y, names, estimator, temperature, batch_size=4)
    assert list(got) == names
    for n in names:
        assert got[n].shape == dict(model.named_parameters())[n].shape
        assert (got[n] >= 0).all()
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-14, msg=lambda m, n=n: f"{n}: {m}")
    # a deeper layer's Fisher is not trivially zero
    assert float(got[names[0]].sum()) > 0


def test_model_untouched_and_modes_restored():
    model = build_model("resnet", (1, 8, 8), 10, seed=0).to(DT)
    model.train()
    model.stem[1].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(5, seed=5)
    f = last_k_fisher(model, x, y, 3, estimator="empirical")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. BN running stats
    assert all(p.grad is None for p in model.parameters())
    assert set(f) == set(last_k_parameter_names(model, 3))


def test_bad_input_is_refused():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="unknown estimator"):
        last_k_fisher(model, x, y, 1, estimator="fisher")
    with pytest.raises(ValueError, match="zero samples"):
        last_k_fisher(model, x[:0], y[:0], 1, estimator="empirical")
    with pytest.raises(ValueError, match="labels of shape"):
        last_k_fisher(model, x, y[:3], 1, estimator="empirical")
    with pytest.raises(ValueError, match="temperature"):
        last_k_fisher(model, x, y, 1, estimator="empirical", temperature=0.0)
    with pytest.raises(ValueError, match="k must lie"):
        last_k_fisher(model, x, y, 9, estimator="empirical")
