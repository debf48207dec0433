"""How fast our decoder runs, beside transformers on the same weights, in one run: decode and prefill.

Why these two numbers: at batch 1, decoding reads every weight once per token
(538 MB in float32 for SmolLM2-135M), so its speed is bounded by the machine's
read bandwidth and we report the % of that bound; prefill processes a whole
prompt per weight read, so it is bounded by arithmetic and we report GFLOP/s
and the % of the FMA roof. Both race our :class:`~effnb.lm.model.LM` against
HF's ``LlamaForCausalLM`` (``generate`` for decode, one forward for prefill),
float32, the same threads, interleaved in the same sitting, through the core
:class:`effnb.perf.Benchmark`.

Decode is timed without the prompt's prefill: both sides start from a cache
holding all but the last prompt token, so each call is ``new_tokens`` passes
of one token (the first of them reads the last prompt token).
"""
from __future__ import annotations

from .model import num_params, weight_bytes


def _prompt(vocab: int, n: int, seed: int = 0):
    """``n`` deterministic token ids (decode speed does not depend on which ones)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (1, n), generator=g)


def kv_bytes_per_token(cfg, dtype_bytes: int = 4) -> int:
    """Keys and values one cached token holds over all layers."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * dtype_bytes


def decode_bytes(model, context: int, new_tokens: int) -> float:
    """Bytes a batch-1 decode of ``new_tokens`` reads after ``context - 1`` cached tokens: every weight once
    per token plus the keys/values attended to."""
    kv = kv_bytes_per_token(model.cfg, model.embed.weight.element_size())
    return new_tokens * weight_bytes(model) + kv * sum(context + i for i in range(new_tokens))


def prefill_flops(model, n: int) -> float:
    """Multiply-adds x 2 of one forward over ``n`` tokens: every weight matrix (the embedding lookup
    excluded, the output layer included) plus causal attention's two products."""
    cfg = model.cfg
    matmul_params = num_params(model) - cfg.vocab_size * cfg.dim * (0 if cfg.tie_embeddings else 1)
    matmul_params -= sum(p.numel() for name, p in model.named_parameters() if p.dim() == 1)
    attention = 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * n * (n + 1)      # QK^T and PV, causal half
    return 2.0 * matmul_params * n + attention


def decode_benchmark(model, hf_model=None, contexts=(16, 256), new_tokens: int = 16, repeats: int = 3,
                     warmup: int = 1, rounds: int = 1, variants: dict | None = None):
    """Batch-1 greedy decode of ``new_tokens`` after prompts of ``contexts`` tokens: ours vs HF generate.

    ``variants`` adds more of our models to the same race, ``{key: (label, model, backend)}``, e.g. the
    same decoder with quantized Linear layers; each provider's bytes are its own model's."""
    import torch
    from .. import perf
    from .generate import generate

    def ours(ctx, model=model):
        ids = _prompt(model.cfg.vocab_size, ctx)
        cache = model.new_cache(capacity=ctx + new_tokens)
        with torch.inference_mode():
            model(ids[:, :-1], cache)

        def run():
            cache.truncate(ctx - 1)
            return generate(model, ids[:, -1:], new_tokens, cache=cache)
        return run

    def hf(ctx):
        ids = _prompt(model.cfg.vocab_size, ctx)
        with torch.inference_mode():
            cache = hf_model(ids[:, :-1], use_cache=True).past_key_values

        def run():
            extra = cache.get_seq_length() - (ctx - 1)
            if extra:
                cache.crop(-extra)
            with torch.inference_mode():
                return hf_model.generate(ids, past_key_values=cache, max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False)
        return run

    bytes_of = lambda m: (lambda ctx: decode_bytes(m, ctx, new_tokens))
    providers = [perf.Provider("ours", "ours (effnb.lm, fp32)", ours, ours=True, backend="torch",
                               bytes_moved=bytes_of(model))]
    for key, (label, variant, backend) in (variants or {}).items():
        providers.append(perf.Provider(key, label, lambda ctx, v=variant: ours(ctx, v), ours=True, backend=backend,
                                       bytes_moved=bytes_of(variant)))
    if hf_model is not None:
        providers.append(perf.Provider("hf", "HF LlamaForCausalLM.generate (fp32)", hf, backend="transformers"))
    return perf.Benchmark(name=f"batch-1 decode, {new_tokens} tokens", x="context (tokens)",
                          x_values=list(contexts), providers=providers,
                          baseline="hf" if hf_model is not None else "ours",
                          bytes_moved=lambda ctx: decode_bytes(model, ctx, new_tokens), unit="GB/s",
                          repeats=repeats, warmup=warmup, rounds=rounds,
                          notes=[f"{new_tokens} new tokens per call; the prompt's prefill is not timed"])


def prefill_benchmark(model, hf_model=None, lengths=(64, 256), repeats: int = 3, warmup: int = 1,
                      rounds: int = 1):
    """One forward over a prompt of ``lengths`` tokens, filling the cache, last position's logits only."""
    import torch
    from .. import perf

    def ours(n):
        ids = _prompt(model.cfg.vocab_size, n)

        def run():
            with torch.inference_mode():
                return model(ids, model.new_cache(capacity=n), last_only=True)
        return run

    def hf(n):
        ids = _prompt(model.cfg.vocab_size, n)

        def run():
            with torch.inference_mode():
                return hf_model(ids, use_cache=True, logits_to_keep=1).logits
        return run

    providers = [perf.Provider("ours", "ours (effnb.lm, fp32)", ours, ours=True, backend="torch")]
    if hf_model is not None:
        providers.append(perf.Provider("hf", "HF LlamaForCausalLM forward (fp32)", hf, backend="transformers"))
    return perf.Benchmark(name="prefill", x="prompt (tokens)", x_values=list(lengths), providers=providers,
                          baseline="hf" if hf_model is not None else "ours",
                          flops=lambda n: prefill_flops(model, n), unit="GFLOP/s",
                          repeats=repeats, warmup=warmup, rounds=rounds)


def tokens_per_second(result, tokens) -> "object":
    """A table of tokens/s per provider and x: ``tokens(x)`` tokens per timed call."""
    df = result.df[["provider", "label", "x", "size", "median_s"]].copy()
    df["tokens/s"] = df["size"].map(tokens) / df["median_s"]
    return df


def report(model, hf_model=None, threads: int | None = None, limits: dict | None = None, contexts=(16, 256),
           new_tokens: int = 16, lengths=(64, 256), repeats: int = 3, rounds: int = 1, progress: bool = True):
    """Both races at ``threads`` threads: a dict of the two :class:`~effnb.perf.Result` objects, their
    tokens/s tables and the decode % of the read-bandwidth bound (from ``limits``, by default
    :func:`effnb.roofline.machine` at the same threads)."""
    from .. import roofline, threads as threads_mod
    n = threads_mod.set_threads(threads)
    limits = roofline.machine(n, progress=progress) if limits is None else limits
    dec = decode_benchmark(model, hf_model, contexts, new_tokens, repeats, rounds=rounds).run(progress)
    pre = prefill_benchmark(model, hf_model, lengths, repeats, rounds=rounds).run(progress)
    dec_t, pre_t = tokens_per_second(dec, lambda _: new_tokens), tokens_per_second(pre, lambda x: x)
    bound = limits["read_gbps"] * 1e9 / weight_bytes(model)
    dec_t["% of read-bandwidth bound"] = 100.0 * dec_t["tokens/s"] / bound
    return {"threads": n, "decode": dec, "prefill": pre, "decode_table": dec_t, "prefill_table": pre_t,
            "decode_vs_limits": dec.table(limits), "prefill_vs_limits": pre.table(limits),
            "weight_bytes": weight_bytes(model), "bound_tokens_per_s": bound, "read_gbps": limits["read_gbps"]}
