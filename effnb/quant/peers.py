"""The libraries we race against, called the way their authors intend.

Why a module of its own: a peer needs its own packing (onnxruntime's
``MatMulNBits`` layout, torch's int4pack) and session setup; keeping that apart
from our kernels makes it plain which code is ours and which is theirs.
"""
from __future__ import annotations

import torch

from .formats import check_weight


def torch_backend() -> str:
    return f"torch {torch.__version__}"


def ort_backend() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime (not installed)"
    return f"onnxruntime {onnxruntime.__version__}"


def torch_int4pack(n: int, k: int, group: int, seed: int = 0):
    """Random int4 codes packed by ``_convert_weight_to_int4pack_for_cpu`` and bf16 scales and zeros
    [K/group, N, 2], the inputs of ``torch._weight_int4pack_mm_for_cpu``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(u, 1)
    sz = (torch.rand(k // group, n, 2, generator=g) * 1e-2).to(torch.bfloat16).contiguous()
    return packed, sz


def ort_available() -> bool:
    """True when ``onnx`` and ``onnxruntime`` both import (the MatMulNBits peer needs both)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_pack(weight: torch.Tensor, block_size: int = 128, asym: bool = False) -> dict:
    """Quantize ``weight`` [N, K] to onnxruntime ``MatMulNBits``' own 4-bit layout.

    The contrib op's layout (com.microsoft, bits=4): K is cut into
    ``n_blocks = ceil(K / block_size)`` blocks (the last one zero-padded);
    ``B`` is uint8 [N, n_blocks, block_size / 2] with codes packed low nibble first
    along K (byte j of a block: weight 2j low, weight 2j + 1 high); ``scales`` is
    fp32 [N * n_blocks]; ``zero_points`` (optional, default 8) is uint8
    [N * ceil(n_blocks / 2)], two blocks per byte, low nibble first, each row padded
    to whole bytes. A weight is ``(code - zero_point) * scale``.
    Returns B, scales, zero_points (None when symmetric) and ``w``, the dequantized
    [N, K] fp32 weight the op must reproduce.
    """
    if block_size not in (16, 32, 64, 128, 256):
        raise ValueError(f"block_size={block_size}: MatMulNBits takes a power of two >= 16")
    w = check_weight(weight).float()
    n, k = w.shape
    nb = -(-k // block_size)
    wp = torch.zeros(n, nb * block_size)
    wp[:, :k] = w
    blocks = wp.view(n, nb, block_size)
    if asym:
        lo = blocks.amin(-1).clamp(max=0.0)
        hi = blocks.amax(-1).clamp(min=0.0)
        scale = ((hi - lo) / 15.0).clamp(min=1e-12)
        zp = torch.round(-lo / scale).clamp(0, 15)
    else:
        scale = (blocks.abs().amax(-1) / 7.0).clamp(min=1e-12)
        zp = torch.full_like(scale, 8.0)
    codes = torch.round(blocks / scale[..., None] + zp[..., None]).clamp(0, 15).to(torch.uint8)
    deq = ((codes.float() - zp[..., None]) * scale[..., None]).view(n, nb * block_size)[:, :k]
    b = (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()
    zpb = None
    if asym:
        z = zp.to(torch.uint8)
        if nb % 2:
            z = torch.cat([z, torch.zeros(n, 1, dtype=torch.uint8)], 1)
        zpb = (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1).contiguous()
    return {"B": b.numpy(), "scales": scale.reshape(-1).float().numpy(), "zero_points":
            None if zpb is None else zpb.numpy(), "w": deq.contiguous(), "n": n, "k": k,
            "block_size": block_size}


def ort_matmulnbits(weight: torch.Tensor | dict, block_size: int = 128, threads: int | None = None,
                    asym: bool = False, accuracy_level: int = 0, spin: bool = False):
    """A one-node ONNX model (com.microsoft ``MatMulNBits``, bits=4) for ``weight`` [N, K].

    The weight is quantized by :func:`ort_pack` (or pass its result) and stored as
    constant initializers, as onnxruntime's own int4 model builders do, so the
    session prepacks it into MLAS' layout once. The session runs on the CPU with
    ``intra_op_num_threads=threads`` (default: torch's) and
    ``inter_op_num_threads=1``. ``accuracy_level`` is the op's attribute: 0 keeps
    fp32 activations, 4 lets MLAS quantize them to int8 per block (W4A8).
    ``spin=False`` sets ``session.intra_op.allow_spinning=0``: a cold benchmark keeps one
    session per weight copy alive, and with spinning on their idle pool threads spin on
    the same cores (several times slower calls on 2 cores, with a large spread); a served
    model has one session, so spinning off is the fair setting here.
    Returns ``run(x)``: fp32 numpy/torch [M, K] -> numpy [M, N]; ``run.packed`` is the
    :func:`ort_pack` dict (``run.packed["w"]`` the dequantized reference weight).
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    pk = weight if isinstance(weight, dict) else ort_pack(weight, block_size, asym)
    n, k, bs = pk["n"], pk["k"], pk["block_size"]
    inits = [numpy_helper.from_array(pk["B"], "B"), numpy_helper.from_array(pk["scales"], "scales")]
    ins = ["A", "B", "scales"]
    if pk["zero_points"] is not None:
        inits.append(numpy_helper.from_array(pk["zero_points"], "zero_points"))
        ins.append("zero_points")
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=bs, accuracy_level=int(accuracy_level))
    graph = helper.make_graph([node], "matmulnbits",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = min(model.ir_version, 10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().float().contiguous().numpy()
        return sess.run(None, {"A": np.ascontiguousarray(x, dtype=np.float32)})[0]
    run.packed, run.session = pk, sess
    return run


ORT_PEERS = {0: "w4a32", 4: "w4a8"}   # MatMulNBits accuracy_level -> what it computes in


def ort_name(group: int, accuracy_level: int) -> str:
    """The label readers see for onnxruntime MatMulNBits at this accuracy level."""
    return f"ort MatMulNBits g{group} acc{accuracy_level} ({ORT_PEERS[accuracy_level]})"
