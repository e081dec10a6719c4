"""Faster implementations of the model's matmuls, swapped in when a model is loaded.

The model classes compute plainly (`nn.Linear`, `moe.looped_experts`); `use_fast_kernels`
replaces, once, each layer's implementation by the fastest one for its device and dtype —
the way gpt-fast swaps linear layers for quantized ones — and `use_plain_kernels` puts the
plain ones back. Nothing is decided per call but what correctness needs: autograd (which the
packed kernels do not support) takes plain torch.

- CPU, fp32, torch built with oneDNN: every matmul — attention's `wqkv` and `wo`, each hit
  expert, the LM head — runs on a copy of its weight that oneDNN reordered once into its
  blocked layout (`PackedLinear`, `PackedExperts`). torch's default fp32 CPU matmul is MKL,
  which runs decode's skinny shapes slowly on non-Intel CPUs (this repository's benchmark
  machine is an AMD EPYC); oneDNN on pre-packed weights measured 1.3-1.7x faster there (2
  threads: the 100352 x 512 LM head at 32 rows 20 ms against 33 ms as chunked bmm and 59 ms
  as `F.linear`; a layer's 16 experts at 8 rows each 6.2 ms against 8.9 ms). The copies
  cost a second copy of the weights in memory; they are remade when a weight is replaced
  or changed in place (its version counter moves), and never saved, pickled or copied.
- CPU otherwise: the LM head as a batched matmul over ~2048-row vocabulary slices
  (`ChunkedLinear`: 1.2-1.8x faster than one [N, D] x [D, V] matmul at decode batch sizes,
  the same numbers); everything else plain.
- CUDA: the hit experts in one `torch._grouped_mm` launch where it applies (bf16 on sm90+,
  16-byte aligned rows); everything else plain torch (cuBLAS).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.model.layers import Attention
from workers.model.moe import ExpertKernel, MoE, each_hit_expert, glu, looped_experts

# The row count oneDNN picks its blocked layout for; measured flat from 1 to 1024 rows at
# decode and prefill shapes, so one layout serves every batch.
ROWS_HINT = 16


@functools.cache
def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed fp32 linear (asked once per process)."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def _packs(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and packing_available()


def _version(weight: torch.Tensor) -> int | None:
    # Inference tensors (made under inference mode) keep no version counter: their in-place
    # changes go unnoticed, so load weights outside inference mode to edit them later.
    return None if weight.is_inference() else weight._version


def _pack(matrix: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(matrix.detach().contiguous(), ROWS_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ packed [out, in]ᵀ -> [..., out]."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, None, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


class _PackedCopies:
    """Packed copies of a weight's matrices, remade when the weight changes; a cache, not
    state: copies and pickles start empty."""

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._version: int | None = None
        self._packed: list[torch.Tensor] = []

    def of(self, weight: torch.Tensor, matrices: Any) -> list[torch.Tensor]:
        if self._source is not weight or self._version != _version(weight):
            self._packed = [_pack(m) for m in matrices(weight)]
            self._source, self._version = weight, _version(weight)
        return self._packed

    def __len__(self) -> int:
        return len(self._packed)

    def __deepcopy__(self, memo: dict[int, Any]) -> _PackedCopies:
        return _PackedCopies()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._source, self._version, self._packed = None, None, []


class PackedLinear(nn.Linear):
    """`nn.Linear` (same `weight`, same state dict) computing on a oneDNN-packed copy."""

    copies: _PackedCopies

    @classmethod
    def of(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        packed.weight = linear.weight
        packed.copies = _PackedCopies()
        packed.copies.of(packed.weight, lambda w: [w])  # packed now, not on the first request
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return F.linear(x, self.weight)
        return packed_linear(x, self.copies.of(self.weight, lambda w: [w])[0])


class ChunkedLinear(nn.Linear):
    """`nn.Linear` over vocabulary-sized outputs as a batched matmul over `chunks` slices of
    ~2048 rows: each slice's weights stay in cache while every row uses them."""

    chunks: int

    @classmethod
    def of(cls, linear: nn.Linear) -> ChunkedLinear:
        chunked = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        chunked.weight = linear.weight
        chunked.chunks = vocab_chunks(linear.out_features)
        return chunked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = x.reshape(-1, x.shape[-1])
        slices = weight.view(self.chunks, -1, weight.shape[-1]).transpose(1, 2)  # [C, D, V/C]
        out = torch.bmm(rows.expand(self.chunks, *rows.shape), slices)  # [C, N, V/C]
        return out.transpose(0, 1).reshape(*x.shape[:-1], weight.shape[0])


def vocab_chunks(vocab_size: int, rows_per_chunk: int = 2048) -> int:
    """How many equal slices of about `rows_per_chunk` rows the LM head splits into (1: none)."""
    for count in range(vocab_size // rows_per_chunk, 1, -1):
        if vocab_size % count == 0:
            return count
    return 1


class PackedExperts:
    """The hit experts' matmuls on per-expert oneDNN-packed [2F, D] gate|up and [D, F] down
    copies (an `ExpertKernel`)."""

    def __init__(self, moe: MoE) -> None:
        self.w13, self.w2 = _PackedCopies(), _PackedCopies()
        self._copies(moe)  # packed now, not on the first request

    def _copies(self, moe: MoE) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        w13 = self.w13.of(moe.w13, lambda w: list(w))
        w2 = self.w2.of(moe.w2, lambda w: [m.T for m in w])
        return w13, w2

    def __call__(self, moe: MoE, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or routed.dtype != torch.float32:
            return looped_experts(moe, routed, counts)
        w13, w2 = self._copies(moe)
        return each_hit_expert(
            moe,
            routed,
            counts,
            up=lambda x, expert: packed_linear(x, w13[expert]),
            down=lambda h, expert: packed_linear(h, w2[expert]),
        )


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these activations: present in this torch, CPU
    (fp32/bf16) or CUDA bf16 on sm90+, and 16-byte aligned rows."""
    if not hasattr(torch, "_grouped_mm") or (x.shape[-1] * x.element_size()) % 16:
        return False
    if x.device.type == "cpu":
        return True
    return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9


def grouped_experts(moe: MoE, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Every hit expert in one grouped matmul per projection (one launch on CUDA)."""
    if len(routed) < 2 or not grouped_mm_supported(routed):
        return looped_experts(moe, routed, counts)
    offsets = counts.cumsum(0).to(torch.int32)
    h = glu(torch._grouped_mm(routed, moe.w13.transpose(1, 2), offs=offsets), moe.hidden)
    return torch._grouped_mm(h, moe.w2, offs=offsets)


def use_fast_kernels(model: nn.Module) -> None:
    """Swap in the fastest implementation of every matmul for its device and dtype (see the
    module docstring). Idempotent; shards of a split model take it too."""
    for module in list(model.modules()):
        if isinstance(module, Attention):
            module.wqkv = _fast_linear(module.wqkv, head=False)
            module.wo = _fast_linear(module.wo, head=False)
        elif isinstance(module, MoE):
            module.experts = _fast_experts(module)
    output = getattr(model, "output", None)
    if isinstance(output, nn.Linear):
        model.output = _fast_linear(output, head=True)


def use_plain_kernels(model: nn.Module) -> None:
    """Put the plain implementations back (frees the packed copies)."""
    for module in list(model.modules()):
        if isinstance(module, Attention):
            module.wqkv, module.wo = _plain(module.wqkv), _plain(module.wo)
        elif isinstance(module, MoE):
            module.experts = looped_experts
    output = getattr(model, "output", None)
    if isinstance(output, nn.Linear):
        model.output = _plain(output)


def _plain(linear: nn.Linear) -> nn.Linear:
    if type(linear) is nn.Linear:
        return linear
    plain = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    plain.weight = linear.weight
    return plain


def _fast_linear(linear: nn.Linear, *, head: bool) -> nn.Linear:
    linear = _plain(linear)
    weight = linear.weight
    if _packs(weight):
        return PackedLinear.of(linear)
    if head and weight.device.type == "cpu" and vocab_chunks(linear.out_features) > 1:
        return ChunkedLinear.of(linear)
    return linear


def _fast_experts(moe: MoE) -> ExpertKernel:
    if _packs(moe.w13):
        return PackedExperts(moe)
    if moe.w13.device.type == "cuda":
        return grouped_experts
    return looped_experts
