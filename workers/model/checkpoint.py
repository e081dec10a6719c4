"""Load and save Hugging Face checkpoint directories (config.json + safetensors).

Loading builds the model on the meta device and assigns the checkpoint's tensors into it,
so the weights exist in memory once. Every tensor the config implies must be present with
its exact shape, and every tensor in the checkpoint must be used: errors name the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workers.model.args import ModelArgs
from workers.model.hf_config import CheckpointError, hf_config_from_args, read_args
from workers.model.hf_format import IGNORED_SUFFIXES, hf_to_internal, internal_to_hf
from workers.model.kernels import use_fast_kernels
from workers.model.transformer import MoETransformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class _SafetensorsReader:
    """Reads tensors by name across one or many shards, remembering which were used."""

    def __init__(self, root: Path, stack: ExitStack, device: str, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.location: dict[str, Path] = self._weight_map(root)
        self.used: set[str] = set()
        self._open: dict[Path, Any] = {}
        self._stack = stack
        self._present: dict[Path, set[str]] = {}

    @staticmethod
    def _weight_map(root: Path) -> dict[str, Path]:
        index = root / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            return {name: root / shard for name, shard in weight_map.items()}
        single = root / SINGLE_FILE
        if not single.exists():
            raise CheckpointError(f"{root} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)

    def _handle(self, shard: Path) -> Any:
        if shard not in self._open:
            if not shard.exists():
                raise CheckpointError(f"shard {shard.name} named in {INDEX_FILE} is missing")
            handle = self._stack.enter_context(safe_open(str(shard), framework="pt"))
            self._open[shard] = handle
            self._present[shard] = set(handle.keys())
        return self._open[shard]

    def __call__(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        shard = self.location.get(name)
        if shard is None:
            raise CheckpointError(
                f"checkpoint is missing tensor {name!r} (expected shape {list(shape)})"
            )
        handle = self._handle(shard)
        if name not in self._present[shard]:
            raise CheckpointError(
                f"tensor {name!r} is listed in {INDEX_FILE} but missing from shard {shard.name}"
            )
        found = tuple(handle.get_slice(name).get_shape())
        if found != shape:
            raise CheckpointError(
                f"tensor {name!r} in {shard.name} has shape {list(found)}; "
                f"the config expects {list(shape)}"
            )
        self.used.add(name)
        if self.device == "meta":  # verification: shapes only, no tensor data read
            return torch.empty(shape, device="meta", dtype=self.dtype)
        return handle.get_tensor(name).to(device=self.device, dtype=self.dtype)

    def unused(self) -> list[str]:
        return sorted(
            n for n in self.location.keys() - self.used if not n.endswith(IGNORED_SUFFIXES)
        )


def verify_checkpoint(path: str | Path) -> ModelArgs:
    """Check a checkpoint directory without reading tensor data: a supported config, and
    every tensor the config needs present with its shape, none left over. Raises
    `CheckpointError` naming the problem."""
    args = read_args(path)
    _read_state(Path(path), args, "meta", torch.float32)
    return args


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MoETransformer:
    """Load an HF DBRX or Mixtral checkpoint directory into a `MoETransformer` (eval mode)."""
    root = Path(path)
    args = read_args(root)
    with torch.device("meta"):
        model = MoETransformer(args)
    state = _read_state(root, args, str(device), dtype)
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.eval().requires_grad_(False)
    use_fast_kernels(model)
    return model


def _read_state(
    root: Path, args: ModelArgs, device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    with ExitStack() as stack:
        reader = _SafetensorsReader(root, stack, device, dtype)
        state = dict(hf_to_internal(args, reader, set(reader.location)))
        unused = reader.unused()
        if unused:
            shown = ", ".join(repr(n) for n in unused[:5])
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            raise CheckpointError(
                f"checkpoint has tensors the {args.family} config does not use: {shown}{more}"
            )
    return state


def _shards(
    tensors: dict[str, torch.Tensor], max_shard_bytes: int | None
) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shard and max_shard_bytes is not None and size + nbytes > max_shard_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = tensor
        size += nbytes
    if shard:
        yield shard


def save_checkpoint(
    model: MoETransformer, path: str | Path, *, max_shard_bytes: int | None = None
) -> Path:
    """Write `model` as an HF directory that `transformers` and `load_checkpoint` both read.

    With `max_shard_bytes`, tensors are split over several files plus an index, as HF does.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    args = model.args
    dtype = model.output.weight.dtype
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    tensors = internal_to_hf(args, state)
    shards = list(_shards(tensors, max_shard_bytes))
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(root / SINGLE_FILE), metadata=metadata)
    else:
        weight_map: dict[str, str] = {}
        for number, shard in enumerate(shards, start=1):
            filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(root / filename), metadata=metadata)
            weight_map.update(dict.fromkeys(shard, filename))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / INDEX_FILE).write_text(json.dumps(index, indent=2))
    config = hf_config_from_args(args, str(dtype).removeprefix("torch."))
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root
