"""Kernels swapped in at load: the model computes the same numbers with them as with plain
torch; the packed copies follow weight changes, are made up front, never travel with copies
of the model; state dicts do not change; autograd takes plain torch."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.model.kernels import (
    PackedExperts,
    PackedLinear,
    packing_available,
    use_fast_kernels,
    use_plain_kernels,
)
from workers.model.loading import build_random
from workers.model.moe import looped_experts
from workers.model.presets import preset
from workers.model.transformer import MoETransformer

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")

SMALL = preset("dbrx-tiny").args.replace(vocab_size=512)


def packed_parts(model: MoETransformer) -> tuple[int, int]:
    """(packed linear layers, layers whose experts run packed)."""
    linears = sum(isinstance(m, PackedLinear) for m in model.modules())
    experts = sum(isinstance(model.block(i).moe.experts, PackedExperts) for i in range(2))
    return linears, experts


def test_packed_linear_equals_plain_linear_and_follows_weight_changes() -> None:
    linear = nn.Linear(64, 96, bias=False)
    x = torch.randn(5, 7, 64)
    packed = PackedLinear.of(linear)
    assert packed.weight is linear.weight and packed.state_dict().keys() == {"weight"}
    with torch.inference_mode():
        assert torch.allclose(packed(x), F.linear(x, linear.weight), atol=1e-5)
    with torch.no_grad():
        linear.weight.mul_(-2)  # in place: the version counter moves, the copy is remade
    with torch.inference_mode():
        assert torch.allclose(packed(x), F.linear(x, linear.weight), atol=1e-5)
    replacement = nn.Parameter(torch.randn(96, 64), requires_grad=False)
    packed.weight = replacement  # a new tensor: repacked too
    with torch.inference_mode():
        assert torch.allclose(packed(x), F.linear(x, replacement), atol=1e-5)


def test_autograd_takes_plain_torch() -> None:
    linear = nn.Linear(16, 32, bias=False)
    PackedLinear.of(linear)(torch.randn(3, 16)).sum().backward()
    assert linear.weight.grad is not None


def test_loaded_models_run_packed_and_compute_what_plain_torch_computes() -> None:
    model = build_random(SMALL, seed=3)
    assert packed_parts(model) == (2 * SMALL.n_layers + 1, SMALL.n_layers)  # swapped at load
    ids = torch.randint(0, SMALL.vocab_size, (2, 9))
    keys = set(model.state_dict())
    with torch.inference_mode():
        packed_logits = model(ids)
        use_plain_kernels(model)
        assert packed_parts(model) == (0, 0)
        assert model.block(0).moe.experts is looped_experts
        plain_logits = model(ids)
    assert set(model.state_dict()) == keys  # the same weights under the same names
    assert (packed_logits - plain_logits).abs().max().item() < 1e-4
    use_fast_kernels(model)
    use_fast_kernels(model)  # idempotent
    assert packed_parts(model) == (2 * SMALL.n_layers + 1, SMALL.n_layers)


def test_copies_of_a_model_repack_for_themselves() -> None:
    model = build_random(SMALL, seed=3)
    ids = torch.randint(0, SMALL.vocab_size, (1, 4))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        head = clone.output
        assert isinstance(head, PackedLinear) and len(head.copies) == 0  # not copied
        with torch.inference_mode():
            assert torch.allclose(clone(ids), model(ids), atol=1e-5)
        assert len(head.copies) == 1
