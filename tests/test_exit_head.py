"""The truncated SmolLM2 with an exit head (effnb.adaptive.exit_head): sharing, caches, fitting, the committed
weights, bad inputs."""
import json

import pytest
import torch

from effnb.adaptive import exit_head as X
from effnb.lm.model import LM, Config, weight_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed=0, layers=3):
    cfg = Config(vocab_size=61, dim=32, n_layers=layers, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq=64)
    return LM(cfg).init_weights(seed).eval()


def random_head(dim=32, seed=0):
    torch.manual_seed(seed)
    return X.ExitHead(dim).eval()


@torch.inference_mode()
@pytest.mark.parametrize("layer", [1, 2, 4])
def test_truncated_model_is_the_first_blocks_then_the_head(layer):
    model = tiny(layers=5)
    head = random_head()
    small = X.truncate(model, layer, head)
    assert all(a is b for a, b in zip(small.layers, model.layers)) and len(small.layers) == layer
    assert small.embed is model.embed and small.head is model.head
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(layer))
    x = model.embed(ids)
    cos, sin = model._rope(0, 9)
    for block in list(model.layers)[:layer]:
        x = block(x, cos, sin)
    want = model.head(model.norm(head(x)))
    torch.testing.assert_close(small(ids), want, rtol=1e-5, atol=1e-5)
    blocks = sum(p.numel() * 4 for blk in list(model.layers)[layer:] for p in blk.parameters())
    assert weight_bytes(small) == weight_bytes(model) - blocks + sum(p.numel() * 4 for p in head.parameters())
    assert X.prefix_bytes(model, layer) == sum(p.numel() * 4 for blk in list(model.layers)[:layer] for p in blk.parameters())


@torch.inference_mode()
@pytest.mark.parametrize("prompt_len", [1, 7])
def test_truncated_model_decodes_with_its_own_cache(prompt_len):
    model = tiny()
    small = X.truncate(model, 2, random_head(seed=1))
    ids = torch.randint(0, 61, (1, prompt_len + 5), generator=torch.Generator().manual_seed(prompt_len))
    cache = small.new_cache(1, 4)
    assert len(cache.k) == 2
    steps = [small(ids[:, :prompt_len], cache)[:, -1]]
    steps += [small(ids[:, t:t + 1], cache)[:, -1] for t in range(prompt_len, ids.shape[1])]
    whole = small(ids)
    torch.testing.assert_close(torch.cat(steps[:-1]), whole[0, prompt_len - 1:-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,d", [(50, 8), (300, 32), (97, 17)])
def test_least_squares_recovers_a_map_that_is_exactly_affine(n, d):
    g = torch.Generator().manual_seed(n)
    at_cut = torch.randn(n, d, generator=g) * 3
    head = X.fit_least_squares(at_cut, at_cut, ridge=1e-9)     # the same state at both ends: the identity
    with torch.no_grad():
        torch.testing.assert_close(head(at_cut), X._rms_normalised(at_cut), rtol=1e-3, atol=1e-3)


def test_residuals_are_the_stream_at_each_cut():
    model = tiny(layers=3)
    ids = torch.randint(0, 61, (70,), generator=torch.Generator().manual_seed(3))
    cut, final, target = X.residuals(model, ids, [1, 2], context=32)
    assert cut[1].shape == cut[2].shape == final.shape == (69, 32) and torch.equal(target, ids[1:])
    with torch.inference_mode():
        x = model.embed(ids[None, 32:64])
        cos, sin = model._rope(0, 32)
        x = model.layers[0](x, cos, sin)
    torch.testing.assert_close(cut[1][32:64], x[0])


def test_kl_refinement_lowers_the_kl_and_leaves_the_model_alone():
    model = tiny(layers=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.embed.weight.mul_(40)       # peaked next-token distributions (a fresh model's are near uniform)
    at_cut = torch.randn(400, 32, generator=g)
    final = 3 * torch.tanh(at_cut @ torch.randn(32, 32, generator=g))    # not affine: least squares is not KL-optimal
    head = X.fit_least_squares(at_cut, final)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        kl0 = float(X.kl_to_full(model, head, at_cut, final))
    losses = X.refine_kl(model, head, at_cut, final, steps=80, batch=64, lr=3e-3, progress=False)
    with torch.no_grad():
        kl1 = float(X.kl_to_full(model, head, at_cut, final))
    assert len(losses) == 80 and kl1 < 0.9 * kl0, (kl0, kl1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_bad_inputs_fail_before_any_work():
    model = tiny()
    for layer in (0, 3, True, 1.5):
        with pytest.raises(ValueError, match="whole number in 1..2"):
            X.truncate(model, layer, random_head())
    with pytest.raises(ValueError, match="maps 16 features"):
        X.truncate(model, 1, X.ExitHead(16))
    with pytest.raises(ValueError, match="positions, dim"):
        X.fit_least_squares(torch.zeros(5, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least two"):
        X.residuals(model, [3], [1])
    with pytest.raises(ValueError, match="steps must be"):
        X.refine_kl(model, random_head(), torch.zeros(4, 32), torch.zeros(4, 32), steps=-1)


def test_saved_head_loads_only_for_the_same_model_file(tmp_path):
    from effnb.lm.smollm2 import GGUF_SHA256
    model = tiny()
    head = random_head(seed=2)
    X.save(head, 2, {"gguf_sha256": GGUF_SHA256, "layer": 2}, tmp_path)
    small = X.load(model, 2, tmp_path)
    ids = torch.randint(0, 61, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(small(ids), X.truncate(model, 2, head.half().float())(ids))
    with pytest.raises(FileNotFoundError, match="python -m effnb.adaptive.exit_head --layers 1"):
        X.load(model, 1, tmp_path)
    X.paths(2, tmp_path)[1].write_text(json.dumps({"gguf_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="retrain it"):
        X.load(model, 2, tmp_path)


def _nll(model, ids) -> float:
    """Mean next-token loss over one window (nats)."""
    with torch.inference_mode():
        return float(torch.nn.functional.cross_entropy(model(ids[None, :-1])[0], ids[1:]))


@pytest.fixture(scope="module")
def smollm2():
    from effnb import lm
    from effnb.lm.corpus import load_corpus
    model, tok = lm.load("smollm2-135m")
    ids = torch.tensor(tok.encode(load_corpus("english-v1", "test")[:2000], add_special_tokens=False)[:256])
    return model, ids, _nll(model, ids)


@pytest.mark.parametrize("layer", X.LAYERS)
def test_committed_heads_beat_the_bare_cut_on_held_out_text(layer, smollm2):
    """The committed head must predict held-out text better than the bare cut (the final norm and the output
    layer read the state at the cut directly) and worse than the full model, as its record says."""
    model, ids, full_nll = smollm2
    info = X.record(layer)
    assert info["layer"] == layer and info["val_accuracy_exit"] < info["val_accuracy_full"]
    bare = X.truncate(model, layer, X.ExitHead(model.cfg.dim))
    with torch.no_grad():
        bare.norm[0].proj.weight.copy_(torch.eye(model.cfg.dim))
        bare.norm[0].proj.bias.zero_()
    assert full_nll < _nll(X.load(model, layer), ids) < _nll(bare, ids)
