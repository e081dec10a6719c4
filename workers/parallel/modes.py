"""The two ways a replica splits over devices, and whether a model's shapes allow a split
(pure: the serving config checks it before anything is deployed)."""

from __future__ import annotations

import math
from typing import Literal, get_args

from workers.model.args import ModelArgs

ParallelMode = Literal["tensor", "expert"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_shardable(args: ModelArgs, mode: ParallelMode, world_size: int) -> None:
    """Raise ValueError, saying what to change, unless `args` splits evenly over
    `world_size` ranks in `mode`."""
    if mode not in get_args(ParallelMode):
        raise ValueError(f"unknown parallel mode {mode!r}; choose 'tensor' or 'expert'")
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if mode == "tensor":
        sizes = {
            "n_heads": args.n_heads,
            "n_kv_heads": args.n_kv_heads,
            "ffn_hidden_size": args.ffn_hidden_size,
        }
    else:
        sizes = {"n_experts": args.n_experts}
    uneven = [f"{name} ({size})" for name, size in sizes.items() if size % world_size]
    if uneven:
        choices = _divisors(math.gcd(*sizes.values()))
        raise ValueError(
            f"{mode} parallel over {world_size} ranks needs {_and_list(uneven)} "
            f"divisible by {world_size}; pick a world size from {choices}"
        )
