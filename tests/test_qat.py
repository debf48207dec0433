"""Quantization-aware training (effnb.quant.qat): the STE layer computes the packed format's arithmetic and
passes gradients, export keeps the outputs, training is deterministic, bad input fails before any work.

Tolerances: exported logits equal the STE model's exactly on windows longer than KERNEL_MAX_M tokens (both
run the same fp32 torch operations on the same quantized numbers); on short windows the C++ kernels
multiply integer codes and apply the two scales after the sum, a different order of float roundings:
atol 1e-4 on logits of magnitude ~20 (measured 8e-6).
"""
import copy

import pytest
import torch

from effnb.lm import bytelm
from effnb.lm.corpus import load_corpus
from effnb.lm.train import byte_tensor
from effnb.quant import KERNEL_MAX_M, QuantLinear, dequantize, fake_linear, quantize
from effnb.quant.qat import SCHEMES, STELinear, export, prepare, ptq, qat, straight_through


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def byte_xs():
    return bytelm.load("byte-xs")[0]


@pytest.fixture(scope="module")
def text_ids():
    return byte_tensor(load_corpus("english-v1", "val")[:400])[None]


def _linear(seed=0, n=64, k=200):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
    return lin


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("learn_scales", [False, True])
def test_ste_forward_is_the_packed_arithmetic_and_gradients_reach_the_latent_weight(scheme, learn_scales):
    lin = _linear()
    ste = STELinear(lin, scheme, learn_scales)
    x = torch.randn(3, 5, 200, generator=torch.Generator().manual_seed(1))
    y = ste(x)
    p = quantize(lin.weight, scheme)
    if not learn_scales:       # starts exactly at the packed format's absmean scales
        torch.testing.assert_close(ste.quantized_weight(), dequantize(p), rtol=0, atol=0)
        torch.testing.assert_close(y, fake_linear(x, p), rtol=0, atol=0)
    else:                      # exp(log s): within a float rounding of absmean
        torch.testing.assert_close(ste.scales(), p.scales, rtol=1e-6, atol=0)
    y.square().sum().backward()
    assert ste.weight.grad is not None and ste.weight.grad.abs().sum() > 0
    assert (ste.weight.grad != 0).float().mean() > 0.9       # passed straight through, not clipped away
    if learn_scales:
        assert ste.log_scales.grad is not None and ste.log_scales.grad.abs().sum() > 0


def test_straight_through_keeps_the_exact_value_and_the_identity_gradient():
    x = torch.tensor([0.3, 0.7, -1.2, 1e-8], requires_grad=True)
    q = torch.round(x.detach())
    out = straight_through(x, q)
    assert torch.equal(out.detach(), q)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_exported_packed_model_gives_the_ste_models_logits(byte_xs, text_ids, scheme):
    ste = prepare(copy.deepcopy(byte_xs), scheme, learn_scales=True).eval()
    with torch.no_grad():                            # move the scales off absmean, as training would
        for m in ste.modules():
            if isinstance(m, STELinear):
                m.log_scales.add_(torch.linspace(-0.05, 0.05, m.log_scales.numel()))
        long, short = ste(text_ids[:, :256]), ste(text_ids[:, :KERNEL_MAX_M])
    packed = export(copy.deepcopy(ste))
    assert not any(isinstance(m, STELinear) for m in packed.modules())
    assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == 7       # all but the tied head
    assert isinstance(packed.head, torch.nn.Linear) and packed.head.weight is packed.embed.weight
    with torch.no_grad():
        torch.testing.assert_close(packed(text_ids[:, :256]), long, rtol=0, atol=0)   # torch path: same ops
        torch.testing.assert_close(packed(text_ids[:, :KERNEL_MAX_M]), short, rtol=0, atol=1e-4)   # kernels


def test_qat_is_deterministic_lowers_the_loss_and_ptq_runs(byte_xs, text_ids):
    text = load_corpus("english-v1", "train")[:200_000]
    kw = dict(steps=8, batch=4, context=64, lr=2e-3, warmup=1, text=text, seed=3, progress=False, log_every=1)
    model, first = qat(byte_xs, "w2a8-ternary", **kw)
    _, again = qat(byte_xs, "w2a8-ternary", **kw)
    assert first == again
    assert min(loss for _, loss in first[-3:]) < first[0][1]
    assert all(p.requires_grad for p in byte_xs.parameters())       # the teacher handed in is untouched
    assert not any(isinstance(m, STELinear) for m in byte_xs.modules())
    with torch.no_grad():
        assert torch.isfinite(export(model)(text_ids[:, :100])).all()
        assert torch.isfinite(ptq(byte_xs, "w1a4-binary")(text_ids[:, :100])).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(scheme="w4a16-g64"), "QAT trains"),
    (dict(scheme="w3a3"), "unknown scheme"),
    (dict(steps=0), "steps"),
    (dict(distill=1.5), r"distill .* \[0, 1\]"),
    (dict(distill=-0.1), r"distill .* \[0, 1\]"),
    (dict(temperature=0.0), "temperature"),
    (dict(lr=0.0), "lr"),
])
def test_bad_input_fails_before_any_work(byte_xs, kwargs, match):
    args = {"model": byte_xs, "scheme": "w2a8-ternary", "steps": 5, "text": "too short to train on", **kwargs}
    with pytest.raises(ValueError, match=match):
        qat(args.pop("model"), args.pop("scheme"), args.pop("steps"), progress=False, **args)


def test_ptq_and_prepare_reject_unknown_schemes_and_export_needs_ste_layers(byte_xs):
    with pytest.raises(ValueError, match="QAT trains"):
        ptq(byte_xs, "w8a8")
    with pytest.raises(ValueError, match="no nn.Linear"):
        prepare(torch.nn.Sequential(torch.nn.ReLU()), "w1a4-binary")
    with pytest.raises(ValueError, match="no STELinear"):
        export(copy.deepcopy(byte_xs))


def test_the_fp32_control_trains_without_quantizing():
    from effnb.quant import qat as QAT
    model, hist = QAT.qat("byte-xs", "fp32", 2, batch=2, context=16, progress=False, log_every=1)
    assert not any(isinstance(m, QAT.STELinear) for m in model.modules()) and len(hist) == 2
