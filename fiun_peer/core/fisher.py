"""Last-layer diagonal Fisher information (paper Eqs. 3 and 4), in closed form for a Linear head.

For a Linear head with input features H [N, D], softmax outputs P [N, C] and one-hot labels Y, the
per-sample gradient of ln p(y|x) is (Y - P)_c * H_d for weight [c, d] and (Y - P)_c for bias [c].
With E = P - Y:

* ``empirical`` (Eqs. 3/4 as written): mean over samples of the squared per-sample gradient,
  F_W = (E∘E)ᵀ(H∘H) / N,  F_b = mean(E∘E).
* ``batch`` (the authors' public code and SSD): for each mini-batch B, in order, the gradient of the
  batch-mean loss G_W = E_Bᵀ H_B / |B|, G_b = mean_B(E); the Fisher is the mean over batches of G∘G.
  Coherent single-class batches inflate it, which is what the paper's γ = 1 was tuned on.
* ``exact``: the true Fisher, expectation over y ~ P (label-free), (P∘(1-P))ᵀ(H∘H) / N.

A generic ``torch.func`` per-sample path serves heads that are not a plain ``nn.Linear``; tests check
the closed forms against it and against a naive per-sample autograd loop. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

ESTIMATORS = ("empirical", "batch", "exact")
Fisher = dict[str, Tensor]


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")


def _check_labels(labels: Tensor, num_classes: int) -> Tensor:
    labels = torch.as_tensor(labels).long()
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))  # one pass, one sync
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{lo}, {hi}]")
    return labels


def fisher_from_features(
    features: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    labels: Tensor,
    *,
    estimator: str,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> Fisher:
    """Diagonal Fisher of a Linear head y = W h + b on ``features``, closed form (Eqs. 3/4).

    Returns ``{"weight": Tensor[C, D], "bias": Tensor[C]}`` (no "bias" when ``head_bias`` is None).
    ``temperature`` T evaluates the residuals of the tempered likelihood softmax(z / T) (T = 1 is the
    paper's); a large T keeps the residuals of confidently classified samples from vanishing. (The
    tempered Fisher proper carries a further 1/T² factor, omitted: it is common to every Fisher and
    cancels in Eq. 6's comparison.)
    """
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    check_estimator(estimator)
    if features.ndim != 2 or head_weight.ndim != 2 or features.shape[1] != head_weight.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} do not fit head weight {tuple(head_weight.shape)}")
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot estimate a Fisher from zero samples")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    num_classes = head_weight.shape[0]
    labels = _check_labels(labels, num_classes)
    if labels.shape[0] != n:
        raise ValueError(f"{n} feature rows but {labels.shape[0]} labels")
    h = features.to(head_weight.dtype)
    logits = h @ head_weight.T
    if head_bias is not None:
        logits = logits + head_bias
    p = torch.softmax(logits / temperature, dim=1)
    h2 = h * h

    if estimator == "exact":
        v = p * (1 - p)
        out = {"weight": v.T @ h2 / n}
        if head_bias is not None:
            out["bias"] = v.mean(0)
        return out

    # E = P - onehot(Y) by subtracting 1 at the label entries only: the same IEEE operations as the
    # dense subtraction (p - 0 is p exactly), without building and casting an N x C one-hot matrix.
    rows = torch.arange(n)
    e = p.index_put((rows, labels), p[rows, labels] - 1)
    if estimator == "empirical":
        e2 = e * e
        out = {"weight": e2.T @ h2 / n}
        if head_bias is not None:
            out["bias"] = e2.mean(0)
        return out

    # batch: squared gradient of each mini-batch's mean loss, averaged over batches (SSD's loop).
    acc_w = torch.zeros_like(head_weight)
    acc_b = torch.zeros(num_classes, dtype=p.dtype)
    batches = 0
    for start in range(0, n, batch_size):
        eb, hb = e[start:start + batch_size], h[start:start + batch_size]
        gw = eb.T @ hb / eb.shape[0]
        acc_w += gw * gw
        gb = eb.mean(0)
        acc_b += gb * gb
        batches += 1
    out = {"weight": acc_w / batches}
    if head_bias is not None:
        out["bias"] = acc_b / batches
    return out


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` registered in ``model`` (its classification head) and its name."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the head")
    return found


def _resolve_head(model: nn.Module, head: nn.Module | str | None) -> tuple[str, nn.Module]:
    if head is None:
        return find_head(model)
    if isinstance(head, str):
        return head, model.get_submodule(head)
    for name, module in model.named_modules():
        if module is head:
            return name, module
    raise ValueError("head is not a submodule of model")


class _HeadReached(BaseException):
    """Raised by head_features' pre-hook once the head's input exists: the head itself (and anything
    after it) need not run, which saves a forward matmul. BaseException, so a model's own
    ``except Exception`` cannot swallow it."""

    def __init__(self, features: Tensor) -> None:
        super().__init__()
        self.features = features


def _stop_at_head(_module: nn.Module, args: tuple) -> None:
    raise _HeadReached(args[0].detach())


def num_samples(inputs: Tensor | Mapping[str, Tensor]) -> int:
    """Rows in a batch of inputs: one tensor, or several (a text model's ``input_ids`` and
    ``attention_mask``) whose first dimension is the sample."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    sizes = {v.shape[0] for v in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs {sorted(inputs)} disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def take(inputs: Tensor | Mapping[str, Tensor], index: Tensor | slice) -> Tensor | dict[str, Tensor]:
    """The rows ``index`` (a boolean mask, indices or a slice) of every input tensor."""
    if isinstance(inputs, Tensor):
        return inputs[index]
    return {k: v[index] for k, v in inputs.items()}


def _call(model: nn.Module, batch: Tensor | Mapping[str, Tensor]) -> object:
    return model(batch) if isinstance(batch, Tensor) else model(**batch)


@torch.no_grad()
def head_features(model: nn.Module, inputs: Tensor | Mapping[str, Tensor], head: nn.Module | str | None = None,
                  *, chunk: int = 1024, call: Callable[[nn.Module, object], object] | None = None) -> Tensor:
    """Run the frozen backbone once (eval mode, no grad) and return the head's input features.

    ``inputs`` is one tensor or a mapping of named tensors (passed as keyword arguments); ``call``
    overrides how a chunk is fed to the model (e.g. ``model(pixel_values=x)``)."""
    call = call or _call
    modules = list(model.modules())
    if isinstance(head, nn.Module):  # the name is not needed here; only that it is ours
        if not any(m is head for m in modules):
            raise ValueError("head is not a submodule of model")
        head_module = head
    else:
        _, head_module = _resolve_head(model, head)
    captured: list[Tensor] = []
    hook = head_module.register_forward_pre_hook(_stop_at_head)
    # Restore each submodule's own mode afterwards (e.g. frozen BatchNorm inside a training model);
    # a model already in eval mode throughout (the common case) is left alone.
    modes = [m.training for m in modules]
    if any(modes):
        model.eval()
    try:
        for start in range(0, num_samples(inputs), chunk):
            try:
                call(model, take(inputs, slice(start, start + chunk)))
            except _HeadReached as reached:
                captured.append(reached.features)
    finally:
        hook.remove()
        if any(modes):
            for m, training in zip(modules, modes, strict=True):
                m.training = training
    if not captured:
        return torch.empty(0)
    # One chunk (N <= chunk, the common case) needs no concatenation copy.
    return (captured[0] if len(captured) == 1 else torch.cat(captured)).flatten(1)


def _nll(logits: Tensor, label: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, label)


def per_sample_fisher(
    head: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    batch_size: int = 64,
) -> Fisher:
    """Generic diagonal Fisher of any head module via ``torch.func`` (vmap over per-sample grads).

    Serves heads that are not a plain Linear; keys are the head's parameter names.
    """
    check_estimator(estimator)
    params = {k: v.detach() for k, v in head.named_parameters()}
    labels = torch.as_tensor(labels).long()

    def loss_fn(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(head, p, (x.unsqueeze(0),))
        return _nll(out, y.unsqueeze(0))

    if estimator == "batch":
        acc = {k: torch.zeros_like(v) for k, v in params.items()}
        batches = 0
        for start in range(0, features.shape[0], batch_size):
            xb, yb = features[start:start + batch_size], labels[start:start + batch_size]
            g = grad(lambda p, xb=xb, yb=yb: nn.functional.cross_entropy(functional_call(head, p, (xb,)), yb))(params)
            for k in acc:
                acc[k] += g[k] * g[k]
            batches += 1
        return {k: v / batches for k, v in acc.items()}

    if estimator == "empirical":
        g = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, features, labels)
        return {k: (v * v).mean(0) for k, v in g.items()}

    # exact: E_{y~p}[g g] = sum_c p_c g_c^2, one vmap per class.
    with torch.no_grad():
        probs = torch.softmax(functional_call(head, params, (features,)), dim=1)
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for c in range(probs.shape[1]):
        yc = torch.full_like(labels, c)
        g = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, features, yc)
        for k in out:
            w = probs[:, c].reshape(-1, *([1] * (g[k].ndim - 1)))
            out[k] += (w * g[k] * g[k]).mean(0)
    return out


def last_layer_fisher(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    batch_size: int = 64,
    head: nn.Module | str | None = None,
) -> Fisher:
    """Diagonal Fisher of the model's last layer on (inputs, labels): Eq. 3 on forget data, Eq. 4 on
    the model's own training data. Closed form for a Linear head, ``torch.func`` otherwise."""
    check_estimator(estimator)
    _, head_module = _resolve_head(model, head)
    feats = head_features(model, inputs, head_module)
    if isinstance(head_module, nn.Linear):
        return fisher_from_features(feats, head_module.weight.detach(),
                                    None if head_module.bias is None else head_module.bias.detach(),
                                    labels, estimator=estimator, batch_size=batch_size)
    return per_sample_fisher(head_module, feats, labels, estimator=estimator, batch_size=batch_size)

