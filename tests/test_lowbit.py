"""Chapter 03's measurements (effnb.quant.lowbit): the byte and bit-operation counts, the race's providers,
the quantized copies of a language model and what a decode step reads from them."""
import pytest
import torch

from effnb import lm
from effnb import quant as Q
from effnb.lm import benchmarks as lmb
from effnb.lm.model import weight_bytes
from effnb.quant import lowbit as L


def test_storage_counts_the_packed_bytes():
    t = L.storage([[4096, 4096], [576, 1536]]).set_index(["shape", "scheme"])
    tern = t.loc[("4096x4096", "w2a8-ternary")]
    assert tern["code bytes"] == 4096 * 4096 // 4              # 2 bits per weight, exactly
    assert tern["scale bytes"] == 4096 * 4                     # one fp32 scale per row
    assert tern["x smaller (codes)"] == 16.0
    assert tern["x smaller (all)"] == pytest.approx(32 / (2 + 32 / 4096))
    binary = t.loc[("576x1536", "w1a4-binary")]
    assert binary["x smaller (all)"] == pytest.approx(32 / (1 + 32 / 1536))
    assert t.loc[("4096x4096", "w4a8-g32"), "bits/weight"] == pytest.approx(4 + 16 / 32)   # fp16 scale per 32


def test_flop_saving_follows_the_bit_widths():
    assert L.flop_saving("w1a4-binary") == 16.0          # BinaryDM's 16.0x: 64 / (1 x 4)
    assert L.flop_saving("w2a8-ternary") == 4.0
    assert L.flop_saving("w8a8") == 1.0
    with pytest.raises(ValueError):
        L.flop_saving("w3a3")


def test_the_race_has_our_low_bit_kernels_and_only_the_named_peers():
    spec = L.race((64, 256), [1], repeats=3, warmup=1, cold=False)   # cold copies of a tiny weight: thousands
    keys = {p.key: p for p in spec.providers}
    assert {"w2a8-ternary", "w1a4-binary", "w4a8"} <= set(keys)
    assert set(keys) - set(L.RACE_OURS) <= set(L.RACE_PEERS)
    assert "bf16" not in keys and "int4pack" not in keys
    assert all(keys[k].ours for k in L.RACE_OURS) and not keys["fp32"].ours
    assert keys["w2a8-ternary"].backend == Q.backend()        # every row names the code that ran
    assert Q.weight_bytes("w2a8-ternary", 64, 256) == 64 * (256 // 4 + 4)
    res = spec.run(progress=False)
    assert res.time("w2a8-ternary", 1) > 0 and res.time("fp32", 1) > 0


def test_lm_copies_quantize_the_blocks_and_keep_ternary_heads_8_bit():
    model, tok = lm.load("byte-xs")
    copies = L.lm_copies(model, ["w8a8", "w2a8-ternary"])
    tern = copies["w2a8-ternary"]
    assert str(tern.head.p.scheme) == L.HEAD_SCHEME and str(tern.layers[0].ffn.up.p.scheme) == "w2a8-ternary"
    assert str(copies["w8a8"].head.p.scheme) == "w8a8"
    assert isinstance(model.head, torch.nn.Linear)           # the original is untouched
    # a decode step reads the packed weights and the norms, not the fp32 embedding matrix
    packed = sum(m.p.nbytes for m in tern.modules() if isinstance(m, Q.QuantLinear))
    norms = sum(p.numel() * 4 for n, p in tern.named_parameters() if p.dim() == 1)
    assert weight_bytes(tern) == packed + norms
    assert weight_bytes(model) == sum(p.numel() * 4 for p in {id(p): p for p in model.parameters()}.values())
    with pytest.raises(ValueError):
        L.lm_copies(model, ["w9a9"])


def test_lm_quality_scores_every_model_on_the_same_windows():
    model, tok = lm.load("byte-xs")
    text = "The quick brown fox jumps over the lazy dog. " * 20
    df = L.lm_quality({"fp32": model, **L.lm_copies(model, ["w8a8"])}, tok, text, 128, 64)
    assert list(df["model"]) == ["fp32", "w8a8"]
    assert df["tokens"].nunique() == 1 and df["vs first"].iloc[0] == 0
    assert abs(df["vs first"].iloc[1]) < 0.05                 # 8-bit barely moves a byte model


def test_decode_benchmark_races_quantized_variants_with_their_own_bytes():
    model, _ = lm.load("byte-xs")
    copies = L.lm_copies(model, ["w2a8-ternary"])
    spec = lmb.decode_benchmark(model, None, contexts=(8,), new_tokens=2, repeats=3, warmup=1,
                                variants={"t": ("ours ternary", copies["w2a8-ternary"], Q.backend())})
    by_key = {p.key: p for p in spec.providers}
    assert by_key["t"].bytes_moved(8) < by_key["ours"].bytes_moved(8) / 4
    res = spec.run(progress=False)
    assert set(res.keys()) == {"ours", "t"}
