"""Merge (Eq. 5), dampen (Eq. 6), normalization, the per-node recipe and its settings: hand-computed
values plus hypothesis properties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fiun_peer.core.fisher import fisher_from_features
from fiun_peer.core.fiun import (
    FisherError,
    FIUnSettings,
    center_head,
    check_fisher,
    dampen,
    fiun_update,
    merge_fishers,
    model_fisher,
    normalize_fisher,
    unlearning_fisher,
)

PROPS = settings(max_examples=60, deadline=None)


def _s(**overrides) -> FIUnSettings:
    """Settings built from the paper's (Table 8) with explicit overrides, so the tests do not depend
    on the project's tunable defaults."""
    return dataclasses.replace(FIUnSettings.paper(), **overrides)


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def _copy(d):
    return {k: v.clone() for k, v in d.items()}


def _same(a, b) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int64 if x.dtype == torch.float64 else torch.int32)


# ---------------------------------------------------------------------------------------------
# merge_fishers (Eq. 5: element-wise maximum)
# ---------------------------------------------------------------------------------------------
def test_merge_hand_computed():
    a = {"weight": torch.tensor([[1.0, 5.0], [0.0, 2.0]]), "bias": t(3.0, 0.0)}
    b = {"weight": torch.tensor([[4.0, 1.0], [0.0, 2.5]]), "bias": t(1.0, 0.5)}
    c = {"weight": torch.tensor([[2.0, 2.0], [7.0, 0.0]]), "bias": t(0.0, 0.25)}
    a0, b0, c0 = _copy(a), _copy(b), _copy(c)
    m = merge_fishers([a, b, c])
    assert torch.equal(m["weight"], torch.tensor([[4.0, 5.0], [7.0, 2.5]]))
    assert torch.equal(m["bias"], t(3.0, 0.5))
    assert _same(a, a0) and _same(b, b0) and _same(c, c0)
    # single-root case: the only Fisher, as a new tensor
    single = merge_fishers([a])
    assert _same(single, a)
    assert single["weight"].data_ptr() != a["weight"].data_ptr()
    # accepts any iterable (a generator)
    assert _same(merge_fishers(f for f in (a, b, c)), m)


def test_merge_errors():
    a = {"weight": torch.ones(2, 2), "bias": torch.ones(2)}
    with pytest.raises(FisherError, match="at least one"):
        merge_fishers([])
    with pytest.raises(FisherError, match="keys"):
        merge_fishers([a, {"weight": torch.ones(2, 2)}])
    with pytest.raises(FisherError, match="keys"):
        merge_fishers([a, {"weight": torch.ones(2, 2), "bias": torch.ones(2), "extra": torch.ones(1)}])
    with pytest.raises(FisherError, match="shape"):
        merge_fishers([a, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}])
    # FisherError is a ValueError, so callers catching ValueError see it
    assert issubclass(FisherError, ValueError)


# ---------------------------------------------------------------------------------------------
# dampen (Eq. 6)
# ---------------------------------------------------------------------------------------------
def test_dampen_hand_computed():
    # tau=2, gamma=1.5, eta=0.5; selected iff Fm > 1.5·F; selected -> min(2·F/Fm, 0.5)·w
    w = t(1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    f = t(0.0, 0.0, 1.0, 2.0, 1.0, 4.0, 2.0)
    fm = t(0.0, 3.0, 0.5, 4.0, 1.0, 100.0, 3.0)
    # 0: F=0, Fm=0      : 0 > 0 false            -> 1
    # 1: F=0, Fm=3      : 3 > 0 true, min(0, .5) -> -2·0 = 0
    # 2: F=1, Fm=0.5    : 0.5 > 1.5 false        -> 3
    # 3: F=2, Fm=4      : 4 > 3 true, min(1, .5) = .5 -> 2
    # 4: F=1, Fm=1      : 1 > 1.5 false          -> 5
    # 5: F=4, Fm=100    : 100 > 6 true, min(.08, .5) = .08 -> 0.48
    # 6: F=2, Fm=3      : 3 > 3 false (strict)   -> 7
    params, mf, uf = {"w": w}, {"w": f}, {"w": fm}
    p0, f0, u0 = _copy(params), _copy(mf), _copy(uf)
    out = dampen(params, mf, uf, tau=2.0, gamma=1.5, eta=0.5)
    torch.testing.assert_close(out["w"], t(1.0, 0.0, 3.0, 2.0, 5.0, 0.48, 7.0), rtol=1e-15, atol=0)
    assert torch.isfinite(out["w"]).all()
    assert _same(params, p0) and _same(mf, f0) and _same(uf, u0)
    assert out["w"].data_ptr() != w.data_ptr()


def test_dampen_paper_defaults_and_multiple_keys():
    # tau=1, gamma=1, eta=0.1: selected entries become min(F/Fm, 0.1)·w
    params = {"weight": torch.tensor([[10.0, 10.0], [10.0, 10.0]]), "bias": t(1.0, -1.0)}
    mf = {"weight": torch.tensor([[1.0, 1.0], [1.0, 0.05]]), "bias": t(2.0, 1.0)}
    uf = {"weight": torch.tensor([[0.5, 2.0], [20.0, 1.0]]), "bias": t(2.0, 1.5)}
    out = dampen(params, mf, uf)
    # weight: [0,0] 0.5>1 no; [0,1] 2>1 yes min(.5,.1)=.1 -> 1; [1,0] 20>1 min(.05,.1) -> .5;
    #         [1,1] 1>.05 yes min(.05,.1)=.05 -> .5
    # bias:   2>2 no -> 1;  1.5>1 yes min(2/3,.1)=.1 -> -.1
    torch.testing.assert_close(out["weight"], torch.tensor([[10.0, 1.0], [0.5, 0.5]]))
    torch.testing.assert_close(out["bias"], t(1.0, -0.1))
    assert set(out) == {"weight", "bias"}


def test_dampen_zero_fishers_are_safe():
    w = t(3.0, -4.0)
    out = dampen({"w": w}, {"w": t(0.0, 0.0)}, {"w": t(0.0, 1e-300)}, tau=1.0, gamma=1.0, eta=0.1)
    assert torch.equal(out["w"], t(3.0, 0.0))
    # gamma = 0: anything with Fm > 0 is selected, Fm = 0 never is
    out = dampen({"w": w}, {"w": t(1.0, 1.0)}, {"w": t(0.0, 1e-3)}, gamma=0.0, eta=1.0)
    assert torch.equal(out["w"], t(3.0, -4.0))  # ratio 1000 clamped to eta=1
    out = dampen({"w": w}, {"w": t(1.0, 1.0)}, {"w": t(0.0, 1e-3)}, gamma=0.0, eta=0.5)
    assert torch.equal(out["w"], t(3.0, -2.0))


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_dampen_rejects_non_finite(which, bad):
    args = [{"w": t(1.0, 2.0)}, {"w": t(1.0, 1.0)}, {"w": t(0.5, 3.0)}]
    args[which]["w"][1] = bad
    with pytest.raises(FisherError, match="NaN or Inf"):
        dampen(*args)


@pytest.mark.parametrize("which", [1, 2])
def test_dampen_rejects_negative_fisher(which):
    # A negative model Fisher would select an entry with Fm = 0 and divide by zero (-inf weights).
    args = [{"w": t(1.0, 2.0)}, {"w": t(1.0, 1.0)}, {"w": t(0.5, 3.0)}]
    args[which]["w"][0] = -1.0
    with pytest.raises(FisherError, match="negative"):
        dampen(*args)


def test_dampen_argument_errors():
    p, f = {"w": t(1.0)}, {"w": t(1.0)}
    for kw in ({"tau": -1.0}, {"gamma": float("nan")}, {"eta": float("inf")}, {"eta": -0.1}):
        with pytest.raises(FisherError):
            dampen(p, f, f, **kw)
    with pytest.raises(FisherError, match="keys differ"):
        dampen(p, {"v": t(1.0)}, f)
    with pytest.raises(FisherError, match="keys differ"):
        dampen(p, f, {"w": t(1.0), "b": t(1.0)})
    with pytest.raises(FisherError, match="shape mismatch"):
        dampen(p, {"w": t(1.0, 2.0)}, f)


# -- hypothesis strategies ---------------------------------------------------------------------
DTYPES = st.sampled_from([np.float32, np.float64])
SHAPES = st.tuples(st.integers(1, 4), st.integers(1, 5))


def _fisher_arrays(dtype, shape, max_value=1e6):
    width = 32 if dtype == np.float32 else 64
    return hnp.arrays(dtype, shape, elements=st.floats(0.0, max_value, allow_nan=False, width=width))


@st.composite
def fisher_family(draw, count: int):
    """`count` Fishers {"weight": [C, D], "bias": [C]} of one dtype and shape."""
    dtype = draw(DTYPES)
    c, d = draw(SHAPES)
    return [{"weight": torch.from_numpy(draw(_fisher_arrays(dtype, (c, d)))),
             "bias": torch.from_numpy(draw(_fisher_arrays(dtype, (c,))))} for _ in range(count)]


@st.composite
def dampen_case(draw):
    dtype = draw(DTYPES)
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 6)))
    width = 32 if dtype == np.float32 else 64
    w = draw(hnp.arrays(dtype, shape, elements=st.floats(-100, 100, allow_nan=False, width=width)))
    f = draw(_fisher_arrays(dtype, shape, 1e3))
    fm = draw(_fisher_arrays(dtype, shape, 1e3))
    return torch.from_numpy(w), torch.from_numpy(f), torch.from_numpy(fm)


@PROPS
@given(fisher_family(2))
def test_merge_properties(pair):
    a, b = pair
    a0, b0 = _copy(a), _copy(b)
    ab = merge_fishers([a, b])
    assert _same(a, a0) and _same(b, b0)  # inputs untouched
    for k in a:
        assert ab[k].shape == a[k].shape and ab[k].dtype == a[k].dtype
        assert (ab[k] >= a[k]).all() and (ab[k] >= b[k]).all()
        assert ((ab[k] == a[k]) | (ab[k] == b[k])).all()  # the maximum is attained
    assert _same(merge_fishers([b, a]), ab)  # commutative
    assert _same(merge_fishers([a, a]), a)  # idempotent
    assert _same(merge_fishers([a]), a)
    assert _same(merge_fishers([ab, b]), ab)  # merge(merge(a, b), b) == merge(a, b)
    assert _same(merge_fishers([ab, a, b]), ab)


@PROPS
@given(fisher_family(3))
def test_merge_associative(triple):
    a, b, c = triple
    left = merge_fishers([merge_fishers([a, b]), c])
    right = merge_fishers([a, merge_fishers([b, c])])
    assert _same(left, right)
    assert _same(left, merge_fishers([a, b, c]))


GAMMAS = st.floats(0.0, 10.0, allow_nan=False)


@PROPS
@given(dampen_case(), GAMMAS, GAMMAS, st.floats(0.0, 5.0), st.floats(0.0, 1.0))
def test_dampen_properties(case, g1, g2, tau, eta):
    w, f, fm = case
    lo, hi = min(g1, g2), max(g1, g2)
    w0, f0, fm0 = w.clone(), f.clone(), fm.clone()
    out_lo = dampen({"w": w}, {"w": f}, {"w": fm}, tau=tau, gamma=lo, eta=eta)["w"]
    out_hi = dampen({"w": w}, {"w": f}, {"w": fm}, tau=tau, gamma=hi, eta=eta)["w"]
    assert torch.equal(w, w0) and torch.equal(f, f0) and torch.equal(fm, fm0)  # inputs untouched
    for out in (out_lo, out_hi):
        assert out.shape == w.shape and out.dtype == w.dtype
        assert torch.isfinite(out).all()
        assert (out.abs() <= w.abs()).all()  # eta <= 1 never increases |w|
        assert ((out == 0) | (torch.sign(out) == torch.sign(w))).all()  # never flips a sign
    # monotone in gamma: what the larger gamma changes, the smaller one changes identically
    changed_lo, changed_hi = _bits(out_lo) != _bits(w), _bits(out_hi) != _bits(w)
    assert not (changed_hi & ~changed_lo).any()
    assert torch.equal(out_hi[changed_hi], out_lo[changed_hi])
    assert int(changed_hi.sum()) <= int(changed_lo.sum())


# Powers of two (and 0) make gamma·F exact, so the test's own selection mask is unambiguous.
EXACT_GAMMAS = st.sampled_from([0.0, 1.0, 2.0, 4.0])


@PROPS
@given(dampen_case(), EXACT_GAMMAS, st.floats(0.0, 5.0), st.floats(0.0, 2.0))
def test_dampen_matches_eq6_elementwise(case, gamma, tau, eta):
    w, f, fm = case
    out = dampen({"w": w}, {"w": f}, {"w": fm}, tau=tau, gamma=gamma, eta=eta)["w"]
    selected = fm > gamma * f
    # unselected entries are bit-identical
    assert torch.equal(_bits(out[~selected]), _bits(w[~selected]))
    # selected entries follow min(tau·F/Fm, eta)·w, checked in float64
    fd, fmd, wd = f.double(), fm.double(), w.double()
    factor = torch.clamp(tau * fd[selected] / fmd[selected], max=eta)
    expected = factor * wd[selected]
    tol = 1e-5 if w.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out[selected].double(), expected, rtol=tol, atol=1e-30)


# ---------------------------------------------------------------------------------------------
# normalize_fisher, check_fisher
# ---------------------------------------------------------------------------------------------
def test_normalize_fisher_hand_computed():
    f = {"weight": torch.tensor([[1.0, 3.0], [2.0, 2.0]]), "bias": t(0.0, 0.0), "b2": t(0.0, 4.0)}
    f0 = _copy(f)
    n = normalize_fisher(f, "mean")
    assert torch.equal(n["weight"], torch.tensor([[0.5, 1.5], [1.0, 1.0]]))  # mean 2
    assert torch.equal(n["bias"], t(0.0, 0.0))  # mean 0: zeros, no NaN
    assert torch.equal(n["b2"], t(0.0, 2.0))  # mean 2
    none = normalize_fisher(f, "none")
    assert _same(none, f)  # (may share storage: nothing downstream mutates a Fisher)
    assert none is not f
    assert _same(f, f0)
    with pytest.raises(FisherError, match="unknown normalization"):
        normalize_fisher(f, "max")


def test_normalize_mean_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    f = {"weight": torch.rand(3, 4, generator=g, dtype=torch.float64)}
    a = normalize_fisher(f, "mean")["weight"]
    b = normalize_fisher({"weight": 1000.0 * f["weight"]}, "mean")["weight"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_check_fisher():
    check_fisher({"w": t(0.0, 1.0)})
    with pytest.raises(FisherError, match="empty"):
        check_fisher({})
    with pytest.raises(FisherError, match="negative"):
        check_fisher({"w": t(-1.0)})
    with pytest.raises(FisherError, match="NaN"):
        check_fisher({"w": t(float("nan"))})
    with pytest.raises(FisherError, match="floating"):
        check_fisher({"w": torch.tensor([1, 2])})


# ---------------------------------------------------------------------------------------------
# FIUnSettings
# ---------------------------------------------------------------------------------------------
def test_settings_defaults_and_paper():
    s = FIUnSettings()  # the project's defaults are tunable; they only have to be valid and round-trip
    assert FIUnSettings(**s.to_dict()) == s
    p = FIUnSettings.paper()
    # Table 8: tau = 1, gamma = 1, eta = 0.1, batch size 64; raw Fishers, the SSD-style batch estimator,
    # none of our additions (normalize, per_label, center; a plain softmax if there is a temperature)
    paper_fields = {"estimator": "batch", "tau": 1.0, "gamma": 1.0, "eta": 0.1,
                    "normalize": "none", "per_label": False, "center": False, "batch_size": 64}
    d = p.to_dict()
    assert {k: d[k] for k in paper_fields} == paper_fields
    assert d.get("temperature", 1.0) == 1.0
    assert FIUnSettings(**p.to_dict()) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.gamma = 2.0


@pytest.mark.parametrize("kwargs", [
    {"estimator": "diag"}, {"normalize": "max"}, {"tau": -1.0}, {"gamma": float("nan")},
    {"eta": float("inf")}, {"eta": -0.5}, {"batch_size": 0},
])
def test_settings_validation(kwargs):
    with pytest.raises(ValueError):
        FIUnSettings(**kwargs)
    with pytest.raises(ValueError):
        _s(**kwargs)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_settings_temperature_validation(value):
    if "temperature" not in {f.name for f in dataclasses.fields(FIUnSettings)}:
        pytest.skip("no temperature setting")
    with pytest.raises(ValueError, match="temperature"):
        _s(temperature=value)


# ---------------------------------------------------------------------------------------------
# model_fisher / unlearning_fisher (Eqs. 3/4 with settings)
# ---------------------------------------------------------------------------------------------
def _toy_data():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(10, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    return feats, w, b, labels


@pytest.mark.parametrize("estimator", ["empirical", "batch", "exact"])
def test_model_fisher_uses_settings(estimator):
    feats, w, b, labels = _toy_data()
    s = _s(estimator=estimator, batch_size=3)
    assert _same(model_fisher(feats, w, b, labels, s),
                 fisher_from_features(feats, w, b, labels, estimator=estimator, batch_size=3))


@pytest.mark.parametrize("estimator", ["empirical", "batch", "exact"])
def test_unlearning_fisher_per_label_true_and_false(estimator):
    feats, w, b, labels = _toy_data()
    m0, m1 = labels == 0, labels == 1
    m01 = m0 | m1
    f0 = fisher_from_features(feats[m0], w, b, labels[m0], estimator=estimator, batch_size=2)
    f1 = fisher_from_features(feats[m1], w, b, labels[m1], estimator=estimator, batch_size=2)
    f01 = fisher_from_features(feats[m01], w, b, labels[m01], estimator=estimator, batch_size=2)

    per = unlearning_fisher(feats, w, b, labels, [1, 0, 1],
                            _s(estimator=estimator, batch_size=2, per_label=True))
    for k in ("weight", "bias"):
        assert torch.equal(per[k], torch.maximum(f0[k], f1[k]))

    joint = unlearning_fisher(feats, w, b, labels, [0, 1],
                              _s(estimator=estimator, batch_size=2, per_label=False))
    assert _same(joint, f01)
    assert not torch.allclose(per["weight"], joint["weight"])

    # one forgotten label: per_label makes no difference
    s_true = _s(estimator=estimator, batch_size=2, per_label=True)
    s_false = _s(estimator=estimator, batch_size=2, per_label=False)
    a = unlearning_fisher(feats, w, b, labels, [2], s_true)
    assert _same(a, unlearning_fisher(feats, w, b, labels, [2], s_false))
    # a forgotten label the model never saw contributes nothing
    assert _same(unlearning_fisher(feats, w, b, labels, [2, 7], s_true), a)


def test_unlearning_fisher_without_forget_samples_raises():
    feats, w, b, labels = _toy_data()
    for per_label in (True, False):
        s = _s(per_label=per_label)
        with pytest.raises(FisherError, match="not a discovery node"):
            unlearning_fisher(feats, w, b, labels, [5, 6], s)
        with pytest.raises(FisherError, match="not a discovery node"):
            unlearning_fisher(feats, w, b, labels, [], s)


# ---------------------------------------------------------------------------------------------
# fiun_update (Algorithm 1, lines 9-10)
# ---------------------------------------------------------------------------------------------
def test_fiun_update_hand_computed_raw_and_mean():
    params = {"weight": t(2.0, 4.0)}
    own = {"weight": t(1.0, 3.0)}  # mean 2 -> [0.5, 1.5]
    d1 = {"weight": t(2.0, 2.0)}  # mean 2 -> [1, 1]
    d2 = {"weight": t(0.0, 8.0)}  # mean 4 -> [0, 2]
    snapshot = [_copy(x) for x in (params, own, d1, d2)]
    # normalize="none": merged [2, 8]; 2 > 1, 8 > 3 both selected;
    #   factors min(1/2, 1) = .5, min(3/8, 1) = .375 -> [1.0, 1.5]
    raw = fiun_update(params, own, [d1, d2], _s(normalize="none", eta=1.0, center=False))
    torch.testing.assert_close(raw["weight"], t(1.0, 1.5))
    # normalize="mean": F = [.5, 1.5], merged [1, 2]; 1 > .5, 2 > 1.5 both selected;
    #   factors min(.5/1, 1) = .5, min(1.5/2, 1) = .75 -> [1.0, 3.0]
    norm = fiun_update(params, own, [d1, d2], _s(normalize="mean", eta=1.0, center=False))
    torch.testing.assert_close(norm["weight"], t(1.0, 3.0))
    assert all(_same(a, b) for a, b in zip(snapshot, (params, own, d1, d2), strict=True))


def test_fiun_update_equals_merge_then_dampen():
    g = torch.Generator().manual_seed(3)
    params = {"weight": torch.randn(4, 5, generator=g), "bias": torch.randn(4, generator=g)}
    own = {k: torch.rand(v.shape, generator=g) for k, v in params.items()}
    ds = [{k: torch.rand(v.shape, generator=g) * 3 for k, v in params.items()} for _ in range(3)]
    s = FIUnSettings.paper()
    expected = dampen(params, own, merge_fishers(ds), tau=s.tau, gamma=s.gamma, eta=s.eta)
    assert _same(fiun_update(params, own, ds, s), expected)
    s = _s(tau=0.5, gamma=2.0, eta=0.3, normalize="mean", center=True)
    expected = dampen(center_head(params), normalize_fisher(own, "mean"),
                      merge_fishers([normalize_fisher(d, "mean") for d in ds]), tau=0.5, gamma=2.0, eta=0.3)
    assert _same(fiun_update(params, own, ds, s), expected)
    # the order of the discovery Fishers does not matter
    assert _same(fiun_update(params, own, ds[::-1], s), expected)


def test_fiun_update_fig4_merges_label_specific_fishers():
    # Fig. 4: w_h descends from w_j, w_s (label 1) and w_f (label 2). Each discovery Fisher flags a
    # different part of the head; only the merge flags both, so only the merge dampens both rows.
    params = {"weight": torch.ones(3, 2)}
    own = {"weight": torch.full((3, 2), 1.0)}
    fj = {"weight": torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]])}
    fs = {"weight": torch.tensor([[0.0, 0.0], [4.0, 6.0], [0.0, 0.0]])}
    ff = {"weight": torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]])}
    s = FIUnSettings.paper()
    out = fiun_update(params, own, [fj, fs, ff], s)["weight"]
    # row 1: merged [5, 6] -> min(1/5, .1), min(1/6, .1) = .1;  row 2: merged 10 -> .1;  row 0 unchanged
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [0.1, 0.1], [0.1, 0.1]]))
    only_label_1 = fiun_update(params, own, [fj, fs], s)["weight"]
    torch.testing.assert_close(only_label_1, torch.tensor([[1.0, 1.0], [0.1, 0.1], [1.0, 1.0]]))


def test_fiun_update_validates_fishers():
    params, own = {"w": t(1.0, 2.0)}, {"w": t(1.0, 1.0)}
    s = _s()
    with pytest.raises(FisherError, match="model Fisher"):
        fiun_update(params, {"w": t(-1.0, 1.0)}, [own], s)
    with pytest.raises(FisherError, match="unlearning Fisher 1"):
        fiun_update(params, own, [own, {"w": t(float("nan"), 1.0)}], s)
    with pytest.raises(FisherError, match="at least one"):
        fiun_update(params, own, [], s)
    with pytest.raises(FisherError):
        fiun_update(params, {}, [own], s)


# ---------------------------------------------------------------------------------------------
# center_head (our addition, off in FIUnSettings.paper())
# ---------------------------------------------------------------------------------------------
def test_center_head_hand_computed_and_softmax_invariant():
    params = {"weight": torch.tensor([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]]), "bias": t(1.0, 2.0, 6.0)}
    p0 = _copy(params)
    c = center_head(params)
    # class means: weight columns [2, 2], bias 3
    torch.testing.assert_close(c["weight"], torch.tensor([[-1.0, 2.0], [1.0, -2.0], [0.0, 0.0]]))
    torch.testing.assert_close(c["bias"], t(-2.0, -1.0, 3.0))
    assert _same(params, p0)
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    before = torch.softmax(x @ params["weight"].T + params["bias"].float(), dim=1)
    after = torch.softmax(x @ c["weight"].T + c["bias"].float(), dim=1)
    torch.testing.assert_close(before, after)
    # centering does not change the Fisher either (it depends on the head only through softmax)
    y = torch.tensor([0, 2])
    for e in ("empirical", "batch", "exact"):
        a = fisher_from_features(x, params["weight"], params["bias"].float(), y, estimator=e)
        b = fisher_from_features(x, c["weight"], c["bias"].float(), y, estimator=e)
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_fiun_update_center_flag():
    params = {"weight": torch.tensor([[1.0, 4.0], [3.0, 0.0]])}
    own = {"weight": torch.ones(2, 2)}
    d = {"weight": torch.tensor([[10.0, 0.0], [0.0, 0.0]])}
    # only entry [0, 0] is selected (10 > 1); factor min(1/10, .1) = .1
    off = fiun_update(params, own, [d], _s(normalize="none", center=False))["weight"]
    torch.testing.assert_close(off, torch.tensor([[0.1, 4.0], [3.0, 0.0]]))
    # centered first: column means [2, 2] -> [[-1, 2], [1, -2]]; then [0, 0] -> -0.1
    on = fiun_update(params, own, [d], _s(normalize="none", center=True))["weight"]
    torch.testing.assert_close(on, torch.tensor([[-0.1, 2.0], [1.0, -2.0]]))
