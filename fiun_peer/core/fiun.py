"""Fisher Inheritance Unlearning: merge (Eq. 5) and dampen (Eq. 6), plus the one recipe both the
centralized reference and every peer call, so the two agree to the bit.

Pure functions over tensors: inputs are never mutated, outputs are new tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .fisher import ESTIMATORS, Fisher, fisher_from_features

NORMALIZATIONS = ("none", "mean")
ROWS = ("all", "forget")


class FisherError(ValueError):
    """Fishers that cannot be combined: mismatched keys or shapes, NaN/Inf, negative entries."""


class SettingsError(ValueError):
    """Settings a request cannot carry: unknown names, values of the wrong JSON type or out of range."""


def _check_finite(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        raise FisherError(f"{name} holds NaN or Inf")


def check_fisher(fisher: Mapping[str, Tensor], *, name: str = "fisher") -> None:
    """Raise FisherError unless every entry is a finite, non-negative floating tensor."""
    if not fisher:
        raise FisherError(f"{name} is empty")
    for k, v in fisher.items():
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise FisherError(f"{name}[{k!r}] is not a floating-point tensor")
        if v.numel() == 0:
            continue
        lo, hi = torch.aminmax(v)  # one pass; NaN propagates into both and fails both tests
        if not bool(hi < math.inf) or not bool(lo > -math.inf):
            raise FisherError(f"{name}[{k!r}] holds NaN or Inf")
        if not bool(lo >= 0):
            raise FisherError(f"{name}[{k!r}] has negative entries; a diagonal Fisher is >= 0")


def merge_fishers(fishers: Iterable[Mapping[str, Tensor]]) -> Fisher:
    """Eq. 5: the merged unlearning Fisher F̂ᴹ_j = Φ({F̂ᴰ_j,k}), Φ = element-wise maximum."""
    fishers = list(fishers)
    if not fishers:
        raise FisherError("merge_fishers needs at least one Fisher")
    keys = set(fishers[0])
    for i, f in enumerate(fishers):
        if set(f) != keys:
            raise FisherError(f"Fisher {i} has keys {sorted(f)}, expected {sorted(keys)}")
        for k in keys:
            if f[k].shape != fishers[0][k].shape:
                raise FisherError(f"Fisher {i}[{k!r}] has shape {tuple(f[k].shape)}, "
                                  f"expected {tuple(fishers[0][k].shape)}")
    return {k: torch.stack([f[k] for f in fishers]).amax(0) for k in sorted(keys)}


def dampen(
    params: Mapping[str, Tensor],
    model_fisher: Mapping[str, Tensor],
    unlearning_fisher: Mapping[str, Tensor],
    *,
    tau: float = 1.0,
    gamma: float = 1.0,
    eta: float = 0.1,
    rows: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Eq. 6: a last-layer parameter l is selected iff F̂ᴹ_l > γ·F_l (no division, so zeros are
    safe); a selected parameter becomes min(τ·F_l / F̂ᴹ_l, η)·w_l, the others stay as they are.

    ``rows`` (our addition) limits the selection to those output rows of the head (the classes of a
    class-level request); None lets Eq. 6 select anywhere, as in the paper."""
    for name, value in (("tau", tau), ("gamma", gamma), ("eta", eta)):
        if not math.isfinite(value) or value < 0:
            raise FisherError(f"{name} must be a finite, non-negative number, got {value}")
    if set(params) != set(model_fisher) or set(params) != set(unlearning_fisher):
        raise FisherError(f"keys differ: params {sorted(params)}, model Fisher {sorted(model_fisher)}, "
                          f"unlearning Fisher {sorted(unlearning_fisher)}")
    out: dict[str, Tensor] = {}
    for k in sorted(params):
        w, f, fm = params[k], model_fisher[k], unlearning_fisher[k]
        if not (w.shape == f.shape == fm.shape):
            raise FisherError(f"shape mismatch for {k!r}: weight {tuple(w.shape)}, model Fisher "
                              f"{tuple(f.shape)}, unlearning Fisher {tuple(fm.shape)}")
        # One fused test in the common case: a NaN or Inf in any of the three makes the sum
        # non-finite. Only then look at each (the sum of huge finite values may overflow harmlessly).
        if not bool(torch.isfinite(w + f.to(w.dtype) + fm.to(w.dtype)).all()):
            for label, t in (("params", w), ("model Fisher", f), ("unlearning Fisher", fm)):
                _check_finite(f"{label}[{k!r}]", t)
        if f.numel() and bool(torch.minimum(f.min(), fm.min()) < 0):
            raise FisherError(f"{k!r}: a Fisher has negative entries; a diagonal Fisher is >= 0")
        f = f.to(w.dtype)
        fm = fm.to(w.dtype)
        selected = fm > gamma * f
        if rows is not None:
            selected = selected & _row_mask(rows, w.shape[0], k).view(-1, *([1] * (w.ndim - 1)))
        # fm > gamma*f >= 0 on selected entries, so the division is safe there; unselected entries
        # get factor 1 and w * 1.0 is w exactly.
        factor = torch.where(selected, torch.clamp(tau * f / torch.where(selected, fm, 1.0), max=eta), 1.0)
        out[k] = w * factor
    return out


def _row_mask(rows: Sequence[int], n_rows: int, key: str) -> Tensor:
    bad = [r for r in rows if not 0 <= int(r) < n_rows]
    if bad:
        raise FisherError(f"{key!r}: row {bad[0]} is outside the head's {n_rows} outputs")
    return torch.isin(torch.arange(n_rows), torch.as_tensor(list(rows), dtype=torch.long))


def normalize_fisher(fisher: Mapping[str, Tensor], method: str) -> Fisher:
    """Rescale a Fisher so Fishers of *different* models are comparable in Eq. 6.

    ``none`` keeps the paper's raw values. ``mean`` divides each tensor by its own mean, so the
    comparison F̂ᴹ > γ·F asks "is this parameter more important to the forget data, relative to that
    model's typical importance, than to this model's own data, relative to its typical importance?".
    """
    if method not in NORMALIZATIONS:
        raise FisherError(f"unknown normalization {method!r}; expected one of {', '.join(NORMALIZATIONS)}")
    if method == "none":
        return dict(fisher)  # tensors are never mutated downstream, so no copy is needed
    out: Fisher = {}
    for k, v in fisher.items():
        mean = v.mean()
        out[k] = v / mean if mean > 0 else torch.zeros_like(v)
    return out


@dataclass(frozen=True)
class FIUnSettings:
    """The knobs of one unlearning request; every peer applies the same ones.

    ``normalize``, ``per_label``, ``center``, ``temperature`` and ``rows`` are our additions (see
    RESULTS.md, "Realistic lineages"); ``paper()`` gives the paper-exact behaviour.

    ``rows = "forget"`` (the default) lets Eq. 6 select only the head rows of the forgotten classes:
    a class-level request's target is those classes' logits. With ``rows = "all"`` (the paper) a
    model that predicts classes its own data lacks (a narrow fine-tune, distillation or transfer of a
    broad parent) has a near-zero model Fisher on those rows, Eq. 6 selects them and they are zeroed.
    Inside the forget rows the default γ = 0 dampens every entry the forget data touches (F̂ > 0):
    a discovery node whose own data is mostly forget data has F̂ ≈ F there, and any γ ≥ 1 spares
    the very entries that carry the class.
    """

    estimator: str = "empirical"
    tau: float = 1.0
    gamma: float = 0.0
    eta: float = 0.0
    normalize: str = "none"
    per_label: bool = True
    center: bool = True
    temperature: float = 4.0
    batch_size: int = 64
    rows: str = "forget"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalize!r}")
        for name in ("tau", "gamma", "eta"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite, non-negative number, got {v}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.rows not in ROWS:
            raise ValueError(f"unknown rows {self.rows!r}; expected one of {', '.join(ROWS)}")

    @classmethod
    def paper(cls) -> FIUnSettings:
        """Eqs. 3-6 exactly as the paper and its public code: batch estimator, raw Fishers."""
        return cls(estimator="batch", gamma=1.0, eta=0.1, normalize="none", per_label=False, center=False,
                   temperature=1.0, rows="all")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FIUnSettings:
        """Settings as a request record carries them (JSON; missing names take the defaults), checked
        strictly: every peer must read the same settings from the same record, so an unknown name
        or a value of another JSON type raises SettingsError instead of being coerced."""
        base = cls().to_dict()
        unknown = set(d or {}) - set(base)
        if unknown:
            raise SettingsError(f"unknown FIUn settings: {', '.join(sorted(unknown))}")
        for key, value in (d or {}).items():  # JSON types must match: "yes" is not a bool, 2.5 not a batch size
            want = type(base[key])
            ok = (isinstance(value, bool) if want is bool else
                  isinstance(value, int | float) and not isinstance(value, bool) if want is float else
                  isinstance(value, want) and not isinstance(value, bool))
            if not ok:
                raise SettingsError(f"FIUn setting {key} must be a {want.__name__}, got {value!r}")
        try:
            return cls(**{**base, **(d or {})})
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"invalid FIUn settings: {exc}") from exc

    def model_fisher_key(self) -> str:
        """Which model Fisher (Eq. 4) these settings need: it depends on them only through the
        estimator, the temperature and the batch size, so requests that differ elsewhere share one."""
        return f"{self.estimator}:T{self.temperature:g}:B{self.batch_size}"


def label_mask(labels: Tensor, wanted: Iterable[int]) -> Tensor:
    """Boolean mask of the samples whose label is in ``wanted`` (e.g. C_f)."""
    return torch.isin(torch.as_tensor(labels).long(), torch.tensor(sorted({int(c) for c in wanted}),
                                                                    dtype=torch.long))


def model_fisher(features: Tensor, head_weight: Tensor, head_bias: Tensor | None, labels: Tensor,
                 settings: FIUnSettings) -> Fisher:
    """Eq. 4: the model Fisher F_j on the model's own training data (computed at publish time)."""
    return fisher_from_features(features, head_weight, head_bias, labels, estimator=settings.estimator,
                                batch_size=settings.batch_size, temperature=settings.temperature)


def unlearning_fisher(features: Tensor, head_weight: Tensor, head_bias: Tensor | None, labels: Tensor,
                      forget_labels: Sequence[int], settings: FIUnSettings) -> Fisher:
    """Eq. 3: a discovery node's unlearning Fisher F̂ᴰ_i on its forget data (samples whose label is
    in C_f). With ``per_label`` one Fisher is estimated per forgotten label and they are merged with
    Eq. 5, so one label's gradients cannot drown another's."""
    labels = torch.as_tensor(labels).long()
    forget = sorted({int(c) for c in forget_labels})
    groups = [[c] for c in forget] if settings.per_label else [forget]
    parts = []
    for group in groups:
        mask = label_mask(labels, group)
        if mask.any():
            parts.append(fisher_from_features(features[mask], head_weight, head_bias, labels[mask],
                                              estimator=settings.estimator, batch_size=settings.batch_size,
                                              temperature=settings.temperature))
    if not parts:
        raise FisherError(f"no samples with labels {forget} in this model's data: not a discovery node")
    return merge_fishers(parts)


def fiun_update(params: Mapping[str, Tensor], own_model_fisher: Mapping[str, Tensor],
                discovery_fishers: Sequence[Mapping[str, Tensor]], settings: FIUnSettings, *,
                forget_labels: Sequence[int] | None = None,
                ancestor_model_fishers: Sequence[Mapping[str, Tensor]] = ()) -> dict[str, Tensor]:
    """Algorithm 1, lines 9-10, for one node: normalize, merge (Eq. 5), dampen (Eq. 6).

    ``params`` are the node's last-layer tensors keyed like the Fishers ("weight", "bias").
    With ``settings.rows == "forget"`` Eq. 6 may select only the rows of ``forget_labels`` (see
    :class:`FIUnSettings`). ``ancestor_model_fishers``, when given, are merged into the model Fisher
    with Eq. 5 (an ablation of RESULTS.md; the peers do not pull ancestors' model Fishers).
    """
    check_fisher(own_model_fisher, name="model Fisher")
    for i, f in enumerate(discovery_fishers):
        check_fisher(f, name=f"unlearning Fisher {i}")
    for i, f in enumerate(ancestor_model_fishers):
        check_fisher(f, name=f"ancestor model Fisher {i}")
    merged = merge_fishers(normalize_fisher(f, settings.normalize) for f in discovery_fishers)
    own = normalize_fisher(own_model_fisher, settings.normalize)
    if ancestor_model_fishers:
        own = merge_fishers([own, *(normalize_fisher(f, settings.normalize) for f in ancestor_model_fishers)])
    rows = None
    if settings.rows == "forget":
        if forget_labels is None:
            raise FisherError("rows='forget' needs the request's forget labels")
        rows = sorted({int(c) for c in forget_labels})
    if settings.center:
        params = center_head(params, exclude=rows or ())
    return dampen(params, own, merged, tau=settings.tau, gamma=settings.gamma, eta=settings.eta, rows=rows)


def center_head(params: Mapping[str, Tensor], exclude: Sequence[int] = ()) -> dict[str, Tensor]:
    """Re-express a softmax head in its zero-mean gauge: subtract the mean over classes from every
    column of the weight and from the bias.

    Softmax is invariant to adding one vector to every row of W (and one constant to every bias), so
    predictions, probabilities and the Fisher are unchanged. What changes is what "scale towards
    zero" in Eq. 6 means: in this gauge a dampened class logit moves to the *average* logit, below
    its competitors, instead of to an arbitrary 0 that may still beat them.

    With ``exclude`` (the forgotten classes) the mean is taken over the other rows only: a
    dampened forgotten row then moves to the mean of the *retained* logits, which the best retained
    class always reaches, so it cannot keep winning by the others' deficit.
    """
    out = {}
    for k, v in params.items():
        keep = ~_row_mask(exclude, v.shape[0], k) if exclude else None
        ref = v if keep is None or not keep.any() else v[keep]
        out[k] = v - ref.mean(0, keepdim=True)
    return out
