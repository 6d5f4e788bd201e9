"""Diagonal Fisher over the parameters of a model's last k layers: the paper's Fig. 9 variant (§6.4),
which FIUn itself does not use (it keeps k = 1, the Linear head, in closed form).

A *layer* here is a module that holds parameters itself (``recurse=False``), in registration order,
which for ``nn.Sequential`` and the zoo models is the forward order. The Fisher is computed by
``torch.func`` over the whole model with only the last k layers' parameters differentiated, so any
architecture works. Scaling follows ``fiun_peer.core.fisher.fisher_from_features``: with a temperature T the
per-sample gradients are those of ln softmax(z / T), multiplied by T (the chain rule's 1/T undone),
so for k = 1 on a Linear head this equals the closed form at every T. Pure functions: no I/O.
An experiment's (bench/exp_last_k_layers.py), not the product's: no peer runs it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fiun_peer.core.fisher import Fisher, check_estimator


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters directly, in registration order."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def last_k_parameter_names(model: nn.Module, k: int) -> list[str]:
    """Full parameter names (as in ``named_parameters``) of the model's last ``k`` layers."""
    layers = parameter_layers(model)
    if not 1 <= k <= len(layers):
        raise ValueError(f"k must lie in [1, {len(layers)}] for {type(model).__name__} "
                         f"({len(layers)} layers with parameters), got {k}")
    wanted = layers[-k:]
    names = []
    for layer in wanted:
        prefix = f"{layer}." if layer else ""
        names += [prefix + n for n, _ in model.get_submodule(layer).named_parameters(recurse=False)]
    return names


def last_k_fisher(model: nn.Module, inputs: Tensor, labels: Tensor, k: int, *, estimator: str,
                  temperature: float = 1.0, batch_size: int = 64, chunk: int = 256) -> Fisher:
    """Diagonal Fisher (Eqs. 3/4 estimators, see ``fisher.py``) of the last ``k`` layers' parameters
    on (inputs, labels), keyed by full parameter name. The model runs in eval mode (each module's
    mode is restored) and is not modified. ``chunk`` bounds how many per-sample gradients are held
    at once."""
    check_estimator(estimator)
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    if batch_size < 1 or chunk < 1:
        raise ValueError("batch_size and chunk must be >= 1")
    labels = torch.as_tensor(labels).long()
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("cannot estimate a Fisher from zero samples")
    if labels.shape != (n,):
        raise ValueError(f"{n} inputs but labels of shape {tuple(labels.shape)}")
    names = last_k_parameter_names(model, k)
    state = {name: t.detach() for name, t in [*model.named_parameters(), *model.named_buffers()]}
    wanted = {name: state[name] for name in names}
    frozen = {name: t for name, t in state.items() if name not in wanted}

    def logits(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, {**frozen, **p}, (x,)) / temperature

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits(p, x.unsqueeze(0)), y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    acc = {name: torch.zeros_like(t) for name, t in wanted.items()}
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if estimator == "batch":
            batches = 0
            for s in range(0, n, batch_size):
                xb, yb = inputs[s:s + batch_size], labels[s:s + batch_size]
                g = grad(lambda p, xb=xb, yb=yb: nn.functional.cross_entropy(logits(p, xb), yb))(wanted)
                for name in acc:
                    acc[name] += g[name] * g[name]
                batches += 1
            denom = batches
        else:
            for s in range(0, n, chunk):
                xc, yc = inputs[s:s + chunk], labels[s:s + chunk]
                if estimator == "empirical":
                    g = per_sample(wanted, xc, yc)
                    for name in acc:
                        acc[name] += (g[name] * g[name]).sum(0)
                    continue
                # exact: E_{y~p}[g_y²] = Σ_c p_c g_c², one vmap per class
                with torch.no_grad():
                    probs = torch.softmax(logits(wanted, xc), dim=1)
                for c in range(probs.shape[1]):
                    g = per_sample(wanted, xc, torch.full_like(yc, c))
                    for name in acc:
                        w = probs[:, c].reshape(-1, *([1] * (g[name].ndim - 1)))
                        acc[name] += (w * g[name] * g[name]).sum(0)
            denom = n
    finally:
        for m, training in modes:
            m.training = training
    t2 = temperature * temperature
    return {name: v * (t2 / denom) for name, v in acc.items()}
