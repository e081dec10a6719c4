"""Weights reordered once into oneDNN's blocked layout, for fp32 inference on CPU.

torch's default fp32 matmul on CPU is MKL, which runs skinny shapes slowly on non-Intel
CPUs (this repository's benchmark machine is an AMD EPYC). oneDNN's own kernels, fed a weight
already in their blocked layout, measured 1.3-1.7x faster on the shapes decoding runs (2
threads, fp32): the 100352 x 512 LM head at 32 rows 20 ms against 33 ms (chunked bmm) and
59 ms (`F.linear`); a layer's 16 experts at 8 rows each 6.2 ms against 8.9 ms (`bmm`).

A packed copy is a cache: made on a weight's first use under `torch.no_grad`/inference
mode (or all at once by `prepack_weights`), remade when the weight is replaced or changed
in place (its version counter moves), never saved, pickled or copied. It costs a second
copy of each weight's memory, so it applies to CPU fp32 only (the models this machine
runs); `set_weight_packing(model, False)` turns it off and frees the copies. Gradients,
other dtypes and devices use plain torch.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The row count oneDNN picks its blocked layout for; measured flat from 1 to 1024 rows at
# decode and prefill shapes, so one layout serves every batch.
ROWS_HINT = 16


@functools.cache
def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed fp32 linear (asked once per process)."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def _version(weight: torch.Tensor) -> int | None:
    # Inference tensors (made under inference mode) keep no version counter: their in-place
    # changes go unnoticed, so load weights outside inference mode to edit them later.
    return None if weight.is_inference() else weight._version


@dataclass
class _Entry:
    source: weakref.ref[torch.Tensor]
    version: int | None
    packed: list[torch.Tensor]

    def holds(self, weight: torch.Tensor) -> bool:
        return self.source() is weight and self.version == _version(weight)


class PackedWeights:
    """A module's packed weight copies, by name, each made on first use (or by
    `prepack_weights`)."""

    def __init__(self) -> None:
        self.enabled = True
        self._entries: dict[str, _Entry] = {}

    def usable(self, weight: torch.Tensor, x: torch.Tensor | None = None) -> bool:
        """Whether a call on `weight` (with activations `x`) may take the packed copy."""
        return (
            self.enabled
            and not torch.is_grad_enabled()
            and weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and (x is None or (x.device.type == "cpu" and x.dtype == torch.float32))
            and packing_available()
        )

    def linear(self, name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`F.linear(x, weight)`: x [..., in], weight [out, in] -> [..., out]."""
        if not self.usable(weight, x):
            return F.linear(x, weight)
        return packed_linear(x, self.matrix(name, weight))

    def matrix(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The packed copy of the [out, in] matrix `weight`; callers check `usable` first."""
        return self.stack(name, weight, lambda w: [w])[0]

    def stack(
        self,
        name: str,
        weight: torch.Tensor,
        linear_weights: Callable[[torch.Tensor], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Packed copies of the [out, in] matrices `linear_weights(weight)` returns (one per
        expert for stacked expert weights); callers check `usable` first."""
        entry = self._entries.get(name)
        if entry is None or not entry.holds(weight):
            with torch.no_grad():
                packed = [
                    torch.ops.mkldnn._reorder_linear_weight(matrix.contiguous(), ROWS_HINT)
                    for matrix in linear_weights(weight.detach())
                ]
            entry = _Entry(weakref.ref(weight), _version(weight), packed)
            self._entries[name] = entry
        return entry.packed

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        """How many weights have a packed copy now."""
        return len(self._entries)

    # A cache, not state: copies and pickles start empty.
    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeights:
        fresh = PackedWeights()
        fresh.enabled = self.enabled
        return fresh

    def __getstate__(self) -> dict[str, Any]:
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.enabled = state["enabled"]
        self._entries = {}


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ packed [out, in]ᵀ -> [..., out]."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, None, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def prepack_weights(model: nn.Module) -> None:
    """Make every module's packed copies now, so that the first request does not wait for
    them (the serving engine calls this once at load). No collectives: safe on one rank of
    a sharded model."""
    with torch.no_grad():
        for module in model.modules():
            prepack = getattr(module, "prepack_weights", None)
            if callable(prepack):
                prepack()


def set_weight_packing(model: nn.Module, enabled: bool) -> None:
    """Turn packed CPU weights on or off for every module of `model` (off frees them)."""
    for module in model.modules():
        packed = getattr(module, "packed_weights", None)
        if isinstance(packed, PackedWeights):
            packed.enabled = enabled
            if not enabled:
                packed.clear()
