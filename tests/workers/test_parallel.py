"""Tensor- and expert-parallel shards, run as two real gloo ranks, reproduce the full model.

One spawn serves the whole module: each rank builds the same seeded models, shards them in
both modes and records what the parent compares against the unsharded model — full causal
logits, KV-cached incremental logits, greedy tokens, and which weights the shard kept.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.generation import generate
from workers.model.args import ModelArgs
from workers.model.loading import build_random
from workers.model.presets import preset
from workers.model.transformer import MoETransformer
from workers.parallel.modes import ParallelMode, check_shardable
from workers.parallel.sharding import shard_model

WORLD_SIZE = 2
FAMILIES = ("dbrx-tiny", "mixtral-tiny")
MODES: tuple[ParallelMode, ...] = ("tensor", "expert")
CASES = [(family, mode) for family in FAMILIES for mode in MODES]
VOCAB = 512
# Wider than the default init so routing is far from uniform and experts differ.
SEED, STD = 3, 0.08
IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(11))
PREFILL = 5
NEW_TOKENS = 12
TOLERANCE = 1e-4  # fp32; the shards only reorder sums


def _args(family: str) -> ModelArgs:
    return preset(family).args.replace(vocab_size=VOCAB)


def _full_model(family: str) -> MoETransformer:
    return build_random(_args(family), seed=SEED, std=STD)


def _cached_logits(model: MoETransformer, ids: torch.Tensor) -> torch.Tensor:
    """Prefill PREFILL tokens, then one token per step: logits [B, T, V]."""
    cache = model.new_cache(len(ids), ids.shape[1])
    pieces = [model(ids[:, :PREFILL], cache=cache)]
    pieces += [model(ids[:, t : t + 1], cache=cache) for t in range(PREFILL, ids.shape[1])]
    return torch.cat(pieces, dim=1)


@torch.inference_mode()
def _exercise(model: MoETransformer) -> dict[str, Any]:
    single = IDS[:1]  # batch 1: decode steps carry one token (N=1 < world size)
    return {
        "full": model(IDS),
        "cached": _cached_logits(model, IDS),
        "cached_single": _cached_logits(model, single),
        "greedy": generate(model, IDS, max_new_tokens=NEW_TOKENS).tokens,
        "greedy_single": generate(model, single[:, :PREFILL], max_new_tokens=NEW_TOKENS).tokens,
        "cache_kv_heads": model.new_cache(1, 4).keys.shape[2],
        "params": {
            name: (tuple(p.shape), p.untyped_storage().nbytes(), p.nbytes)
            for name, p in model.named_parameters()
        },
    }


def _run_rank(rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        results: dict[Any, Any] = {
            (family, mode): _exercise(shard_model(_full_model(family), mode, rank, WORLD_SIZE))
            for family, mode in CASES
        }
        try:
            shard_model(_full_model("dbrx-tiny"), "expert", WORLD_SIZE - 1 - rank, WORLD_SIZE)
        except ValueError as error:
            results["wrong_rank_error"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, dict[str, Any]]]:
    out_dir = tmp_path_factory.mktemp("parallel")
    # A file rendezvous: no free-port race between concurrent test runs.
    mp.spawn(
        _run_rank, args=(str(out_dir / "rendezvous"), str(out_dir)), nprocs=WORLD_SIZE, join=True
    )
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@cache
def _reference(family: str) -> dict[str, Any]:
    return _exercise(_full_model(family))


@pytest.mark.parametrize(("family", "mode"), CASES)
@pytest.mark.parametrize("run", ["full", "cached", "cached_single"])
def test_every_rank_of_a_shard_returns_the_full_models_logits(
    ranks: list[dict[Any, dict[str, Any]]], family: str, mode: ParallelMode, run: str
) -> None:
    expected = _reference(family)[run]
    for rank, results in enumerate(ranks):
        error = (results[(family, mode)][run] - expected).abs().max().item()
        assert error <= TOLERANCE, f"rank {rank}: max |Δlogits| {error:.2e}"


@pytest.mark.parametrize(("family", "mode"), CASES)
def test_shards_generate_the_full_models_greedy_tokens(
    ranks: list[dict[Any, dict[str, Any]]], family: str, mode: ParallelMode
) -> None:
    expected = _reference(family)
    for results in ranks:
        assert results[(family, mode)]["greedy"] == expected["greedy"]
        assert results[(family, mode)]["greedy_single"] == expected["greedy_single"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_shards_keep_their_slice_of_heads_and_hidden_units(
    ranks: list[dict[Any, dict[str, Any]]], family: str
) -> None:
    args, full = _args(family), _reference(family)["params"]
    for results in ranks:
        shard = results[(family, "tensor")]
        params = shard["params"]
        assert shard["cache_kv_heads"] == args.n_kv_heads // WORLD_SIZE
        q_rows, kv_rows = args.q_size // WORLD_SIZE, args.kv_size // WORLD_SIZE
        assert params["layers.0.attention.wqkv.weight"][0] == (q_rows + 2 * kv_rows, args.d_model)
        assert params["layers.0.attention.wo.weight"][0] == (args.d_model, q_rows)
        hidden = args.ffn_hidden_size // WORLD_SIZE
        assert params["layers.0.moe.w13"][0] == (args.n_experts, 2 * hidden, args.d_model)
        assert params["layers.0.moe.w2"][0] == (args.n_experts, hidden, args.d_model)
        assert params["layers.0.moe.router.weight"] == full["layers.0.moe.router.weight"]
        assert params["output.weight"] == full["output.weight"]
        _assert_owns_its_memory(params)


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_shards_keep_only_their_experts(
    ranks: list[dict[Any, dict[str, Any]]], family: str
) -> None:
    args, full = _args(family), _reference(family)["params"]
    local = args.n_experts // WORLD_SIZE
    for results in ranks:
        shard = results[(family, "expert")]
        params = shard["params"]
        assert shard["cache_kv_heads"] == args.n_kv_heads
        ffn = args.ffn_hidden_size
        assert params["layers.0.moe.w13"][0] == (local, 2 * ffn, args.d_model)
        assert params["layers.0.moe.w2"][0] == (local, ffn, args.d_model)
        attention = "layers.0.attention.wqkv.weight"
        assert params[attention] == full[attention]
        _assert_owns_its_memory(params)


def _assert_owns_its_memory(params: dict[str, tuple[tuple[int, ...], int, int]]) -> None:
    """No shard parameter is a view that keeps the full weight alive."""
    views = {name for name, (_, storage, size) in params.items() if storage != size}
    assert not views


def test_shapes_that_do_not_divide_are_rejected_with_the_choices() -> None:
    args = _args("dbrx-tiny")  # 4 heads, 2 kv heads, F 256, 16 experts
    every_size = r"n_heads \(4\), n_kv_heads \(2\) and ffn_hidden_size \(256\) divisible by 3"
    with pytest.raises(ValueError, match=every_size):
        check_shardable(args, "tensor", 3)
    with pytest.raises(ValueError, match=r"n_kv_heads \(2\) divisible by 4.*from \[1, 2\]$"):
        check_shardable(args, "tensor", 4)
    with pytest.raises(ValueError, match=r"needs ffn_hidden_size \(255\) divisible by 2;.*\[1\]$"):
        check_shardable(args.replace(ffn_hidden_size=255), "tensor", 2)
    with pytest.raises(ValueError, match=r"n_experts \(16\) divisible by 3.*\[1, 2, 4, 8, 16\]"):
        check_shardable(args, "expert", 3)
    with pytest.raises(ValueError, match="unknown parallel mode"):
        check_shardable(args, "pipeline", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        check_shardable(args, "expert", 0)


def test_shapes_that_divide_pass() -> None:
    args = _args("mixtral-tiny")
    for mode, world_size in [("tensor", 1), ("tensor", 2), ("expert", 4), ("expert", 8)]:
        check_shardable(args, mode, world_size)  # type: ignore[arg-type]
    real_dbrx = preset("dbrx-instruct").args
    check_shardable(real_dbrx, "tensor", 8)
    check_shardable(real_dbrx, "expert", 16)


def test_a_world_of_one_leaves_the_model_as_it_was() -> None:
    model = _full_model("mixtral-tiny")
    before = {name: p.clone() for name, p in model.state_dict().items()}
    assert shard_model(model, "tensor", 0, 1) is model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_rank_other_than_the_process_groups_is_rejected(
    ranks: list[dict[Any, dict[str, Any]]],
) -> None:
    for rank, results in enumerate(ranks):
        other = WORLD_SIZE - 1 - rank
        assert results["wrong_rank_error"] == (
            f"asked for rank {other} of 2, but this process is rank {rank} of the process group's 2"
        )


def test_a_shard_cannot_be_sharded_again() -> None:
    model = shard_model(_full_model("dbrx-tiny"), "expert", 0, WORLD_SIZE)  # no collective yet
    with pytest.raises(ValueError, match="already a shard"):
        shard_model(model, "tensor", 0, WORLD_SIZE)


def test_a_rank_outside_the_world_is_rejected_before_anything_changes() -> None:
    model = _full_model("dbrx-tiny")
    wqkv = model.block(0).attention.wqkv.weight
    with pytest.raises(ValueError, match="rank 2 is outside the world of 2"):
        shard_model(model, "tensor", 2, 2)
    assert model.block(0).attention.wqkv.weight is wqkv
