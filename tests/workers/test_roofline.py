"""Bytes-per-step accounting behind the bandwidth limit."""

from __future__ import annotations

from workers.model.presets import preset
from workers.roofline import decode_bytes_per_step, expected_experts_hit


def test_batch_one_reads_exactly_top_k_experts() -> None:
    args = preset("dbrx-bench-309m").args
    assert expected_experts_hit(args, 1) == args.top_k


def test_large_batches_hit_nearly_every_expert() -> None:
    args = preset("dbrx-bench-309m").args
    assert args.n_experts - 0.01 < expected_experts_hit(args, 64) <= args.n_experts


def test_batch_one_bytes_are_active_parameters_plus_kv_cache() -> None:
    args = preset("dbrx-instruct").args
    step = decode_bytes_per_step(args, batch_size=1, context_len=0, bytes_per_element=2)
    # active parameters (35.85 B) in bf16 plus one embedding row: the ≈71.7 GB of docs/models.md
    assert abs(step - 2 * (args.active_parameter_count() + args.d_model)) < 1
    assert round(step / 1e9, 1) == 71.7
    with_cache = decode_bytes_per_step(args, batch_size=1, context_len=1000, bytes_per_element=2)
    assert with_cache - step == 1000 * 160 * 1024
