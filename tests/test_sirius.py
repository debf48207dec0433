"""Contextual sparsity (Griffin, CATS, static) in a gated FFN, and Sirius's corrected decoding, on a tiny
random Llama-style model: every mode against the dense layer, the correction against plain greedy."""
import pytest
import torch

from effnb.adaptive import contextual as C
from effnb.adaptive import experiments as E
from effnb.adaptive import sirius as S
from effnb.lm.model import LM, Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed=0, ffn_dim=48):
    cfg = Config(vocab_size=61, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=ffn_dim, max_seq=64)
    return LM(cfg).init_weights(seed).eval()


def prompts(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


@torch.inference_mode()
def test_every_mode_keeping_every_neuron_is_the_dense_layer():
    model = tiny()
    x = torch.randn(1, 5, 32)
    ffn = model.layers[0].ffn
    want = ffn(x)
    C.contextualize(model, 1.0)
    C.calibrate_cats(model, prompts())          # keep 1.0: threshold -1, every neuron active
    layer = model.layers[0].ffn
    for mode in C.MODES:
        C.set_mode(model, mode)
        if mode == "griffin":
            C.prime(model)
            torch.testing.assert_close(layer(x), want)     # the priming pass is dense
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x[:, :1]), want[:, :1], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_griffin_keeps_the_neurons_with_the_largest_prompt_norm():
    model = tiny()
    C.contextualize(model, 0.25)
    layer = model.layers[1].ffn
    x = torch.randn(1, 7, 32)
    C.set_mode(model, "griffin")
    C.prime(model)
    layer(x)
    f = layer.full
    h = f.act(f.gate(x)) * f.up(x)
    want = h[0].norm(dim=0).topk(layer.k).indices.sort().values
    assert torch.equal(layer.griffin[3], want) and layer.k == 12
    y = torch.randn(1, 1, 32)
    keep = torch.zeros(48)
    keep[want] = 1
    torch.testing.assert_close(layer(y), f.down(f.act(f.gate(y)) * f.up(y) * keep), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_cats_zeroes_the_inactive_neurons_and_one_token_matches_many():
    model = tiny()
    C.contextualize(model, 0.5)
    thresholds = C.calibrate_cats(model, prompts(8))
    layer = model.layers[2].ffn
    C.set_mode(model, "cats")
    x = torch.randn(1, 6, 32)
    f = layer.full
    a = f.act(f.gate(x))
    want = f.down(torch.where(a.abs() > thresholds[2], a, 0.0) * f.up(x))
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)             # the torch path (many rows)
    one = torch.cat([layer(x[:, i:i + 1]) for i in range(6)], dim=1)              # the kernel path (one row)
    torch.testing.assert_close(one, want, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_calibrated_thresholds_leave_the_asked_share_active():
    model = tiny(ffn_dim=256)
    C.contextualize(model, 0.3)
    calib = prompts(12, seed=3)
    thresholds = C.calibrate_cats(model, calib)
    seen = []
    hook = model.layers[0].ffn.full.gate.register_forward_hook(lambda m, i, out: seen.append(out))
    C.set_mode(model, "dense")
    for p in calib:
        model.hidden(torch.tensor([p]))
    hook.remove()
    active = (torch.nn.functional.silu(torch.cat(seen, dim=1)).abs() > thresholds[0]).float().mean()
    assert abs(float(active) - 0.3) < 0.02


def test_bytes_per_token_follow_the_mode():
    model = tiny()
    C.contextualize(model, 0.5)
    one = 32 * 4
    assert C.ffn_bytes(model, "dense") == 3 * 3 * 48 * one
    assert C.ffn_bytes(model, "griffin") == C.ffn_bytes(model, "static") == 3 * 3 * 24 * one
    assert C.ffn_bytes(model, "cats", active=0.25) == 3 * (48 + 2 * 12) * one


@pytest.mark.parametrize("period", [2, 3, 8])
def test_sirius_at_tolerance_one_writes_the_full_models_greedy_tokens(period):
    model = tiny(seed=1)
    C.contextualize(model, 0.25)
    C.calibrate_cats(model, prompts(6, seed=9))
    for p in prompts(4):
        for n in (1, 2, 13):
            want = S.plain_generate(model, p, n, "dense").tokens
            for sparse in ("griffin", "cats", "static"):
                got = S.sirius_generate(model, p, n, sparse, period, 1.0)
                assert got.tokens == want, (p, n, sparse)
                assert len(got.tokens) == n


def test_sirius_corrects_a_poor_drafter_and_a_loose_tolerance_corrects_less():
    model = tiny(seed=2)
    with torch.no_grad():                        # make the FFN matter (random init barely uses it)
        for block in model.layers:
            block.ffn.gate.weight.mul_(20)
            block.ffn.down.weight.mul_(200)
    C.contextualize(model, 0.1)
    strict = [S.sirius_generate(model, p, 16, "static", 4, 1.0) for p in prompts(4)]
    loose = [S.sirius_generate(model, p, 16, "static", 4, 1e-6) for p in prompts(4)]
    assert sum(r.corrections for r in strict) > 0
    assert sum(r.corrections for r in loose) < sum(r.corrections for r in strict)
    assert all(r.full_passes >= 1 + 16 // 4 for r in loose)


def test_teacher_forced_agreement_of_the_dense_model_is_one():
    model = tiny()
    C.contextualize(model, 0.5)
    for p in prompts(3):
        cont = S.plain_generate(model, p, 9).tokens
        assert S.teacher_forced_agreement(model, p, cont, "dense") == 1.0
        assert 0.0 <= S.teacher_forced_agreement(model, p, cont, "static") <= 1.0


def test_bad_input_is_refused_before_work():
    model = tiny()
    with pytest.raises(ValueError, match="keep"):
        C.contextualize(model, 0.0)
    with pytest.raises(ValueError, match="contextualize"):
        C.set_mode(tiny(), "cats")
    C.contextualize(model, 0.5)
    with pytest.raises(ValueError, match="mode"):
        C.set_mode(model, "sparse")
    C.set_mode(model, "cats")
    with pytest.raises(RuntimeError, match="calibrate_cats"):
        model(torch.tensor([[1, 2]]))
    C.set_mode(model, "griffin")
    with pytest.raises(RuntimeError, match="prime"):
        model(torch.tensor([[1, 2]]))
    for kwargs, what in (({"period": 1}, "period"), ({"tolerance": 0.0}, "tolerance"), ({"tolerance": 1.5}, "tolerance")):
        with pytest.raises(ValueError, match=what):
            S.sirius_generate(model, [1, 2], 4, "static", **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        S.sirius_generate(model, [1, 2], 0)


def test_threshold_for_share_takes_the_lowest_within_the_budget():
    class Stats:
        entropy = torch.tensor([0.5, 1.5, 2.5, 3.5])
    assert E.threshold_for_share(Stats, 1, 0.5, [0.0, 1.0, 2.0, 3.0]) == 2.0
    assert E.threshold_for_share(Stats, 1, 0.25, [3.0, 0.0, 2.0]) == 3.0
    with pytest.raises(ValueError, match="larger thresholds"):
        E.threshold_for_share(Stats, 1, 0.1, [0.0, 1.0])


def test_sparsity_quality_with_one_prefill_per_prompt_equals_a_prefill_per_call():
    """The study reuses each prompt's full-model prefill for every mode and keep (and Griffin's activation
    norms for every k); its agreements must equal a fresh prefill per call."""
    from effnb.adaptive import experiments as E
    model = tiny(seed=4)
    with torch.no_grad():
        for b in model.layers:          # large FFN outputs, so that dropping neurons changes tokens
            for m in (b.ffn.gate, b.ffn.up, b.ffn.down):
                m.weight.mul_(10)
    C.contextualize(model, 1.0)
    ps = prompts(3, seed=4)
    conts = E.full_continuations(model, ps, 6)
    calib = prompts(2, seed=9)
    got = E.sparsity_quality(model, ps, conts, [0.2, 0.5], calib).set_index(["mode", "keep"])["agreement"]
    for keep in (0.2, 0.5):
        C.contextualize(model, keep)
        C.calibrate_cats(model, calib)
        for mode in ("griffin", "cats", "static"):
            want = sum(S.teacher_forced_agreement(model, p, c, mode) for p, c in zip(ps, conts)) / len(ps)
            assert got[mode, keep] == pytest.approx(want), (mode, keep)
    assert got.min() < 1.0      # sparsity changes something here, so equality is not trivial
