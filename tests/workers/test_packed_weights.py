"""oneDNN-packed CPU weights: same numbers as plain torch, remade when weights change."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from workers.model.loading import build_random
from workers.model.packed import (
    PackedWeights,
    packing_available,
    prepack_weights,
    set_weight_packing,
)
from workers.model.presets import preset

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")

SMALL = preset("dbrx-tiny").args.replace(vocab_size=512)


def packed_counts(model: torch.nn.Module) -> list[int]:
    """How many packed copies each module that packs holds."""
    holders = [getattr(module, "packed_weights", None) for module in model.modules()]
    return [len(holder) for holder in holders if isinstance(holder, PackedWeights)]


def test_packed_linear_equals_plain_linear_and_follows_weight_changes() -> None:
    weight, x = torch.randn(96, 64), torch.randn(5, 7, 64)
    replacement = torch.randn(96, 64)
    packed = PackedWeights()
    with torch.inference_mode():
        assert torch.allclose(packed.linear("w", x, weight), F.linear(x, weight), atol=1e-5)
        assert len(packed) == 1

        weight.mul_(-2)  # in place: the version counter moves, the copy is remade
        assert torch.allclose(packed.linear("w", x, weight), F.linear(x, weight), atol=1e-5)

        got = packed.linear("w", x, replacement)  # a new tensor under the same name
        assert torch.allclose(got, F.linear(x, replacement), atol=1e-5)

        made_here = torch.randn(96, 64)  # an inference tensor: no version counter
        assert torch.allclose(packed.linear("w", x, made_here), F.linear(x, made_here), atol=1e-5)


def test_autograd_and_other_dtypes_take_plain_torch() -> None:
    weight = torch.randn(32, 16, requires_grad=True)
    packed = PackedWeights()
    packed.linear("w", torch.randn(3, 16), weight).sum().backward()
    assert weight.grad is not None
    with torch.inference_mode():
        packed.linear("b", torch.randn(3, 16, dtype=torch.bfloat16), weight.bfloat16())
    assert len(packed) == 0


def test_model_logits_match_with_packing_on_and_off() -> None:
    model = build_random(SMALL, seed=3)
    ids = torch.randint(0, SMALL.vocab_size, (2, 9))
    with torch.inference_mode():
        packed_logits = model(ids)
        assert all(count > 0 for count in packed_counts(model))  # every module took it
        set_weight_packing(model, False)
        plain_logits = model(ids)
        assert set(packed_counts(model)) == {0}  # off frees the copies
    assert (packed_logits - plain_logits).abs().max().item() < 1e-4


def test_prepack_makes_every_copy_up_front_and_copies_start_empty() -> None:
    model = build_random(SMALL, seed=3)
    prepack_weights(model)
    # Attention: wqkv and wo; MoE: w13 and w2; the LM head.
    assert sorted(set(packed_counts(model))) == [1, 2]
    assert sum(packed_counts(model)) == 4 * SMALL.n_layers + 1

    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert set(packed_counts(clone)) == {0}
        ids = torch.randint(0, SMALL.vocab_size, (1, 4))
        with torch.inference_mode():
            assert torch.allclose(clone(ids), model(ids), atol=1e-5)
