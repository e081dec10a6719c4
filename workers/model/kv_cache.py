"""A contiguous per-batch KV cache for incremental decoding.

Every sequence in the batch shares one write position, which is what a static batch needs
(`workers.generate`, `workers.bench`). The engine replaces it with a paged cache; the
attention math in `layers.py` stays the same.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layers, batch_size, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0  # positions already written by completed forward passes

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, K, T, Hd] after the cached prefix; return [B, K, length+T, Hd] views."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(
                f"KV cache holds {self.capacity} positions; this step needs {end}. "
                "Create the cache with a larger capacity (prompt + max new tokens)."
            )
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, count: int) -> None:
        self.length += count

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
