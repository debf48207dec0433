"""Window-based early-exit cascades and selective automation on digits (effnb.adaptive.cascades)."""
import math

import pytest
import torch
from torch import nn

from effnb.adaptive import cascades as C


@pytest.fixture(scope="module")
def splits():
    return C.digits_splits(seed=0)


@pytest.fixture(scope="module")
def members(splits):
    """Three tiny, briefly trained members: enough for the mechanics, not for accuracy."""
    return [C.train(2, s, splits, epochs=3) for s in range(3)]


def _hook_macs(model, x):
    count = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            count[0] += out.numel() * k
        elif isinstance(mod, nn.Linear):
            count[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return count[0] / x.shape[0]


@pytest.mark.parametrize("width", [1, 2, 4, 9])
def test_macs_formula_equals_hook_count(width, splits):
    model = C.SmallCNN(width)
    assert C.macs(model) == _hook_macs(model, splits["test"][0][:5])


def test_macs_of_a_list_sums_and_peer_width_reaches_it():
    ms = [C.SmallCNN(4) for _ in range(4)]
    target = C.macs(ms)
    assert target == 4 * C.macs(ms[0])
    w = C.width_for_macs(target)
    assert C.macs(C.SmallCNN(w)) >= target > C.macs(C.SmallCNN(w - 1))


def test_digits_splits_shapes_stratified_deterministic():
    s = C.digits_splits(seed=0)
    assert sum(len(y) for _, y in s.values()) == 1797
    for x, y in s.values():
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and len(x) == len(y)
        assert set(y.tolist()) == set(range(10))
    assert abs(len(s["calib"][1]) - 0.4 * 1797) <= 2
    again = C.digits_splits(seed=0)
    assert all(torch.equal(s[k][0], again[k][0]) for k in s)
    clean = C.digits_splits(seed=0, noise=0.0)
    assert clean["test"][0].min() >= 0 and clean["test"][0].max() <= 1


def test_default_single_model_lands_in_the_intended_accuracy_band(splits):
    x, y = splits["test"]
    with torch.no_grad():
        acc = (C.train(4, 0, splits)(x).argmax(1) == y).float().mean().item()
    assert 0.80 <= acc <= 0.95, acc


def test_training_is_deterministic_and_leaves_global_rng_alone(splits):
    x = splits["test"][0][:50]
    state = torch.random.get_rng_state()
    a, b, c = (C.train(3, s, splits, epochs=2) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))


@pytest.mark.parametrize("score", C.SCORES)
def test_window_inf_is_the_full_ensemble(members, splits, score):
    x, y = splits["test"]
    ts = C.stage_thresholds(members, *splits["calib"], risk=0.1, score=score)
    r = C.cascade(members, x, ts, math.inf, score)
    ens = C.ensemble_probs(members, x)
    assert torch.allclose(r.probs, ens, atol=1e-6)
    assert (r.stage == len(members) - 1).all()
    assert torch.equal(r.accept, C.uncertainty(ens, score) <= ts[-1])
    assert r.macs_per_sample == C.macs(members)


def test_window_zero_is_the_first_member_alone(members, splits):
    x, _ = splits["test"]
    ts = C.stage_thresholds(members, *splits["calib"], risk=0.1)
    r = C.cascade(members, x, ts, 0.0)
    with torch.no_grad():
        p0 = members[0](x).softmax(1)
    assert torch.allclose(r.probs, p0, atol=1e-6)
    assert (r.stage == 0).all()
    assert torch.equal(r.accept, C.uncertainty(p0) <= ts[0])
    assert r.macs == len(x) * C.macs(members[0])


def test_compaction_matches_running_every_member_on_every_sample(members, splits):
    x, _ = splits["test"]
    ts = C.stage_thresholds(members, *splits["calib"], risk=0.1)
    with torch.no_grad():
        ps = [m(x).softmax(1) for m in members]
    dense = [sum(ps[:j + 1]) / (j + 1) for j in range(len(ps))]
    window = (C.uncertainty(dense[0]) - ts[0]).abs().median().item()  # about half go on
    r = C.cascade(members, x, ts, window)
    assert len(set(r.stage.tolist())) > 1
    for j in range(len(members)):
        at = r.stage == j
        assert torch.allclose(r.probs[at], dense[j][at], atol=1e-6)
        went_on = r.stage > j
        near = (C.uncertainty(dense[j]) - ts[j]).abs() <= window
        assert near[went_on].all()
        if j < len(members) - 1:
            assert not near[at].any()
    assert r.macs == sum(int((r.stage >= j).sum()) * C.macs(m) for j, m in enumerate(members))
    assert torch.equal(r.accept, r.uncertainty <= torch.tensor(ts, dtype=torch.float32)[r.stage])


def test_risk_threshold_meets_the_risk_is_maximal_and_monotone():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(500, generator=g).round(decimals=2)  # many ties
    correct = torch.rand(500, generator=g) > scores * 0.6
    prev = -math.inf
    for risk in [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]:
        t = C.risk_threshold(scores, correct, risk)
        cov, achieved = C.selective(scores, correct, t)
        assert cov == 0 or achieved <= risk
        for v in scores[scores > t].unique():
            assert C.selective(scores, correct, float(v))[1] > risk
        assert t >= prev
        prev = t


def test_risk_threshold_edge_cases():
    s = [0.1, 0.1, 0.2]
    assert C.risk_threshold(s, [True, False, True], 0.4) == pytest.approx(0.2)  # the tied pair errs 50%
    assert C.risk_threshold(s, [True, True, False], 0.2) == pytest.approx(0.1)  # ties go in together
    assert C.risk_threshold(s, [True, True, True], 0.01) == pytest.approx(0.2)  # all correct: accept all
    t = C.risk_threshold(s, [False, False, False], 0.5)
    assert t == -math.inf
    cov, risk = C.selective(s, [False] * 3, t)
    assert cov == 0 and math.isnan(risk)
    out = C.coverage_at_risk(s, [True, True, False], [0.05, 0.3], [True, True], 0.2)
    assert out["coverage"] == 0.5 and out["risk"] == 0.0


def test_studies_rows_are_consistent(members, splits):
    large = C.train(C.width_for_macs(C.macs(members)), 0, splits, epochs=3)
    df = C.cascade_study(members, large, splits, risk=0.1, windows=[0.0, math.inf], repeats=1)
    assert len(df) == 5 and {"coverage", "risk", "macs_vs_large", "ms_test_set", "time_vs_large"} <= set(df)
    small, big, ens, w0, winf = (df.iloc[i] for i in range(5))
    assert big.macs_vs_large == 1.0 and ens.macs_vs_large <= 1.0
    assert w0.coverage == small.coverage and w0.macs_per_sample == small.macs_per_sample
    assert winf.coverage == ens.coverage and winf.macs_per_sample == ens.macs_per_sample
    auto = C.automation_study(members, splits, target=0.99, peer=large)
    assert len(auto) == 3 and auto["automated_share"].between(0, 1).all()
    own = auto.iloc[0]  # matching its own overall accuracy automates (nearly) everything
    assert own.automated_share >= 0.9 and own.meets_target


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("ran a member before validating the inputs")


def test_bad_inputs_raise_before_any_work(splits):
    x = splits["test"][0][:4]
    boom = [_Boom()]
    for risk in [0, 1, -0.1, 1.5, "0.05"]:
        with pytest.raises(ValueError, match="risk must be"):
            C.risk_threshold([0.1, 0.2], [True, False], risk)
    with pytest.raises(ValueError, match="window must be"):
        C.cascade(boom, x, 0.1, -1.0)
    with pytest.raises(ValueError, match="window must be"):
        C.cascade(boom, x, 0.1, math.nan)
    with pytest.raises(ValueError, match="members must be"):
        C.cascade([], x, 0.1, 0.1)
    with pytest.raises(ValueError, match="one per member"):
        C.cascade(boom, x, [0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        C.cascade(boom, x[:, 0], 0.1, 0.1)
    with pytest.raises(ValueError, match="score must be"):
        C.cascade(boom, x, 0.1, 0.1, score="margin")
    with pytest.raises(ValueError, match="equally long"):
        C.risk_threshold([0.1, 0.2], [True], 0.05)
    with pytest.raises(ValueError, match="equally long"):
        C.risk_threshold([], [], 0.05)
    with pytest.raises(ValueError, match="same length"):
        C.stage_thresholds(boom, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="windows must"):
        C.cascade_study(boom, _Boom(), splits, windows=[-0.1])
    with pytest.raises(ValueError, match="target must"):
        C.automation_study(boom, splits, target=0)
    with pytest.raises(ValueError, match="fractions"):
        C.digits_splits(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="noise"):
        C.digits_splits(noise=-1)
    with pytest.raises(ValueError, match="width"):
        C.SmallCNN(0)
