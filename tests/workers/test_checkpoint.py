"""Checkpoint loading and saving: layouts, sharding, dtypes, and errors that name the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.workers.hf_reference import RefShape, save_hf
from workers.model.checkpoint import load_checkpoint, save_checkpoint
from workers.model.hf_config import CheckpointError
from workers.model.loading import build_random
from workers.model.presets import preset

SMALL = preset("dbrx-tiny").args.replace(vocab_size=256, d_model=64, head_dim=16)


def _sharded(tmp_path: Path) -> Path:
    model = build_random(SMALL, seed=3)
    return save_checkpoint(model, tmp_path / "ckpt", max_shard_bytes=64 * 1024)


def test_saved_preset_round_trips_through_sharded_checkpoint(tmp_path: Path) -> None:
    model = build_random(SMALL, seed=3)
    root = save_checkpoint(model, tmp_path / "ckpt", max_shard_bytes=64 * 1024)
    assert (root / "model.safetensors.index.json").exists()
    assert len(list(root.glob("model-*.safetensors"))) > 2
    loaded = load_checkpoint(root)
    ids = torch.randint(0, SMALL.vocab_size, (2, 9))
    assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("family", ["dbrx", "mixtral"])
def test_transformers_loads_what_we_save(family: str, tmp_path: Path) -> None:
    import transformers

    args = (
        SMALL
        if family == "dbrx"
        else preset("mixtral-tiny").args.replace(vocab_size=256, d_model=64, head_dim=16)
    )
    model = build_random(args, seed=5, std=0.08)
    save_checkpoint(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, args.vocab_size, (2, 11))
    with torch.no_grad():
        expected = reference(ids).logits
    assert (model(ids) - expected).abs().max().item() <= 1e-4


def test_mixtral_fused_gate_up_layout_loads_like_per_expert_layout(tmp_path: Path) -> None:
    shape = RefShape("mixtral", n_experts=4, top_k=2)
    save_hf(shape, tmp_path / "per_expert")
    per_expert = load_file(tmp_path / "per_expert" / "model.safetensors")
    fused: dict[str, torch.Tensor] = {}
    for name, tensor in per_expert.items():
        if ".block_sparse_moe.experts." not in name:
            fused[name.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = tensor
    for layer in range(shape.n_layers):
        src = f"model.layers.{layer}.block_sparse_moe.experts"
        dst = f"model.layers.{layer}.mlp.experts"
        experts = range(shape.n_experts)
        fused[f"{dst}.gate_up_proj"] = torch.stack(
            [
                torch.cat((per_expert[f"{src}.{e}.w1.weight"], per_expert[f"{src}.{e}.w3.weight"]))
                for e in experts
            ]
        )
        fused[f"{dst}.down_proj"] = torch.stack(
            [per_expert[f"{src}.{e}.w2.weight"] for e in experts]
        )
    (tmp_path / "fused").mkdir()
    save_file(fused, tmp_path / "fused" / "model.safetensors")
    (tmp_path / "fused" / "config.json").write_text(
        (tmp_path / "per_expert" / "config.json").read_text()
    )

    expected = load_checkpoint(tmp_path / "per_expert").state_dict()
    loaded = load_checkpoint(tmp_path / "fused").state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loads_in_half_precision(dtype: torch.dtype, tmp_path: Path) -> None:
    root = _sharded(tmp_path)
    model = load_checkpoint(root, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    reference = load_checkpoint(root)
    ids = torch.randint(0, SMALL.vocab_size, (1, 6))
    assert (model(ids).float() - reference(ids)).abs().max().item() < 0.1


def _rewrite_shard(root: Path, name: str, change: str) -> None:
    index = json.loads((root / "model.safetensors.index.json").read_text())
    shard = root / index["weight_map"][name]
    tensors = load_file(shard)
    if change == "drop":
        del tensors[name]
    else:
        tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, shard)


@pytest.mark.parametrize("change", ["drop", "misshape"])
def test_bad_tensor_in_sharded_checkpoint_is_named(change: str, tmp_path: Path) -> None:
    root = _sharded(tmp_path)
    name = "transformer.blocks.1.ffn.experts.mlp.v1"
    _rewrite_shard(root, name, change)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as caught:
        load_checkpoint(root)
    if change == "misshape":
        assert "[4095, 64]" in str(caught.value) and "[4096, 64]" in str(caught.value)


def test_tensor_missing_from_index_is_named(tmp_path: Path) -> None:
    root = _sharded(tmp_path)
    index_path = root / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["transformer.norm_f.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensor 'transformer\.norm_f\.weight'"):
        load_checkpoint(root)


def test_unexpected_tensor_is_named(tmp_path: Path) -> None:
    model = build_random(SMALL, seed=3)
    save_checkpoint(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.blocks.9.extra"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"transformer\.blocks\.9\.extra"):
        load_checkpoint(tmp_path)


def test_unsupported_model_type_lists_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"'llama'.*dbrx, mixtral"):
        load_checkpoint(tmp_path)


def test_missing_config_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tmp_path)
