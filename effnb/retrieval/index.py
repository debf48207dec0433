"""The packed ragged multi-vector index the MaxSim kernels read.

Late interaction keeps one vector per document token, so documents are ragged.
Rather than padding every document to the longest (bytes spent on nothing), all
token vectors are concatenated row-wise into one ``vectors [T, d]`` matrix and
``offsets [D+1]`` (int64) says which rows each document owns: document i is rows
``offsets[i]:offsets[i+1]``; an empty document is allowed and scores 0.

``int8`` stores each vector as codes in [-127, 127] with one fp32 scale
(symmetric absmax): about a quarter of the bytes, and integer dot products.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = ("fp32", "int8")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per row: codes = round(x * 127 / max|x|) in [-127, 127], scale = max|x| / 127.

    A zero row gets scale 0 (and codes 0). Queries and the index use the same rule, and
    -128 never occurs (the AVX2 kernel's sign trick needs that).
    """
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.clamp(torch.round(x * inv[:, None]), -127, 127).to(torch.int8)
    return codes.contiguous(), (amax / 127.0).contiguous()


@dataclass(frozen=True)
class PackedIndex:
    """``vectors`` [T, d] (fp32, or int8 codes), ``offsets`` [D+1] int64, ``scales`` [T] fp32 for int8
    (None for fp32) and ``dtype`` ("fp32" or "int8"). Build one with :meth:`from_list`."""
    vectors: torch.Tensor
    offsets: torch.Tensor
    scales: torch.Tensor | None = None
    dtype: str = "fp32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: pass one of {DTYPES}")
        want = torch.float32 if self.dtype == "fp32" else torch.int8
        v, off = self.vectors, self.offsets
        if v.dtype != want or v.dim() != 2 or not v.is_contiguous():
            raise ValueError(f"a {self.dtype} index needs contiguous {want} vectors [T, d], got {v.dtype} "
                             f"of shape {tuple(v.shape)}")
        if off.dtype != torch.int64 or off.dim() != 1 or off.numel() < 1 or not off.is_contiguous():
            raise ValueError(f"offsets must be a contiguous 1-D int64 tensor [D+1], got {off.dtype} "
                             f"of shape {tuple(off.shape)}")
        if int(off[0]) != 0 or int(off[-1]) != v.shape[0] or bool((off.diff() < 0).any()):
            raise ValueError(f"offsets must rise from 0 to the {v.shape[0]} rows without decreasing, got "
                             f"{off[0].item()} .. {off[-1].item()}; build the index with PackedIndex.from_list")
        if self.dtype == "int8" and (self.scales is None or self.scales.dtype != torch.float32
                                     or self.scales.shape != (v.shape[0],) or not self.scales.is_contiguous()):
            raise ValueError(f"an int8 index needs contiguous fp32 scales [{v.shape[0]}], one per vector")
        if self.dtype == "fp32" and self.scales is not None:
            raise ValueError("an fp32 index has no scales; pass scales=None")

    @classmethod
    def from_list(cls, documents, dtype: str = "fp32") -> "PackedIndex":
        """Pack a list of per-document [n_i, d] float tensors (n_i may be 0) into one index."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: pass one of {DTYPES}")
        docs = list(documents)
        if not docs:
            raise ValueError("no documents: pass a list of [n_i, d] tensors, one per document")
        for i, t in enumerate(docs):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"document {i} is {shape}; pass each document as a 2-D float tensor [n_i, d] "
                                 "(one row per token; torch.empty(0, d) for an empty one)")
        d = docs[0].shape[1]
        for i, t in enumerate(docs):
            if t.shape[1] != d:
                raise ValueError(f"document {i} has d={t.shape[1]} but document 0 has d={d}; "
                                 "pass vectors of one dimension (one encoder)")
        if d < 1:
            raise ValueError("the vectors have d=0; pass documents of shape [n_i, d] with d >= 1")
        vectors = torch.cat([t.detach().to(torch.float32) for t in docs]).contiguous()
        if not bool(torch.isfinite(vectors).all()):
            bad = next(i for i, t in enumerate(docs) if not bool(torch.isfinite(t).all()))
            raise ValueError(f"document {bad} holds NaN or inf; pass finite vectors")
        lengths = torch.tensor([t.shape[0] for t in docs], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        if dtype == "int8":
            codes, scales = quantize_rows(vectors)
            return cls(codes, offsets, scales, "int8")
        return cls(vectors, offsets, None, "fp32")

    @property
    def num_docs(self) -> int:
        return self.offsets.numel() - 1

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """Rows (token vectors) per document, int64 [D]."""
        return self.offsets.diff()

    @property
    def nbytes(self) -> int:
        """Every stored byte: the vectors, the offsets and (int8) the scales."""
        n = self.vectors.numel() * self.vectors.element_size() + self.offsets.numel() * 8
        return n + (self.scales.numel() * 4 if self.scales is not None else 0)

    def dequantized(self) -> torch.Tensor:
        """The fp32 vectors [T, d] the index stands for (codes * scale for int8)."""
        if self.scales is None:
            return self.vectors
        return self.vectors.to(torch.float32) * self.scales[:, None]

    def doc(self, i: int) -> torch.Tensor:
        """Document ``i``'s fp32 vectors [n_i, d] (dequantized for int8)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        v = self.vectors[a:b]
        return v if self.scales is None else v.to(torch.float32) * self.scales[a:b, None]
