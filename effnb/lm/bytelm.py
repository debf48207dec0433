"""Tiny byte-level language models trained here on ``english-v1``: models a chapter can retrain.

Why bytes: no tokenizer to train or ship, the vocabulary is 256, and bits
per character compare directly with xz and with SmolLM2. Why tiny: quantization-
aware training, distillation and sparsity need a model trained end to end on
this machine in minutes. Widths are multiples of 256 so every kernel family's
blocking fits them without padding.

The committed weights (float16 safetensors under ``effnb/lm/weights/``, with a
JSON record of how they were trained and what they score) come from
``python -m effnb.lm.train <name>``; chapters load them and never train in the
smoke preset.
"""
from __future__ import annotations

import json
from pathlib import Path

from .model import Config

WEIGHTS = Path(__file__).resolve().parent / "weights"

CONFIGS = {
    # ~0.46 M parameters: one block
    "byte-xs": Config(vocab_size=256, dim=256, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq=256),
    # ~3.0 M parameters: five blocks
    "byte-s": Config(vocab_size=256, dim=256, n_layers=5, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq=256),
}


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255); decoding replaces a cut multi-byte character."""
    vocab_size = 256
    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def config(name: str) -> Config:
    if name not in CONFIGS:
        raise ValueError(f"unknown byte model {name!r}; have {', '.join(CONFIGS)}")
    return CONFIGS[name]


def paths(name: str, where: Path | str = WEIGHTS) -> tuple[Path, Path]:
    """The weights file and its JSON record."""
    config(name)
    where = Path(where)
    return where / f"{name}.safetensors", where / f"{name}.json"


def record(name: str, where: Path | str = WEIGHTS) -> dict:
    """How the committed weights were trained and what they score (val bits/char, ...)."""
    _, meta = paths(name, where)
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing; train it with `python -m effnb.lm.train {name}`")
    return json.loads(meta.read_text())


def save(model, name: str, info: dict, where: Path | str = WEIGHTS) -> Path:
    """Write the weights in float16 and ``info`` beside them."""
    import os
    from safetensors.torch import save_file
    from .. import files
    weights, meta = paths(name, where)
    weights.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items()
          if not (model.cfg.tie_embeddings and k == "head.weight")}
    tmp = weights.with_name(f"{weights.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"config": json.dumps(model.cfg.to_dict(), sort_keys=True)})
    tmp.replace(weights)
    files.write_json(meta, info)
    for p in (weights, meta):
        p.chmod(0o644)          # committed files: readable by all (the temporary files were private)
    return weights


def load(name: str, where: Path | str = WEIGHTS):
    """``(model, ByteTokenizer())``: the committed weights in float32, eval mode."""
    from safetensors import safe_open
    from .model import LM
    weights, _ = paths(name, where)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; train it with `python -m effnb.lm.train {name}`")
    with safe_open(str(weights), "pt") as fh:
        cfg = Config.from_dict(json.loads(fh.metadata()["config"]))
        sd = {k: fh.get_tensor(k).float() for k in fh.keys()}
    model = LM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "head.weight")]
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit {name}: missing {missing}, unexpected {unexpected}")
    return model.eval(), ByteTokenizer()
