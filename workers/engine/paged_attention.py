"""Paged KV storage and the attention context that reads through block tables.

All tokens of a step are flattened into one row (the model sees B = 1, T = N). The cache
holds every layer's keys and values as [slots, K, Hd] with slot = block * block_size +
offset; each step writes the new tokens' k/v at their slots, then:

- decoding sequences (one new token each) attend together: their keys are gathered into a
  padded [B, K, S, Hd] batch and masked by each sequence's context length;
- prefilling sequences (a chunk of new tokens) attend one by one over their own context
  with a causal mask aligned to the end of the context.

Gather + SDPA is the portable path (CPU and GPU). The slot indices and masks are built once
per step (`PagedBatch`) and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class PagedKVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        num_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layers, 2, num_blocks * block_size, n_kv_heads, head_dim)
        self.storage = torch.zeros(shape, device=device, dtype=dtype)
        self.num_blocks = num_blocks
        self.block_size = block_size

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, each [slots, K, Hd]."""
        return self.storage[index, 0], self.storage[index, 1]

    def nbytes(self) -> int:
        return self.storage.nbytes


@dataclass(frozen=True)
class PrefillSegment:
    start: int  # offset of the chunk's first token in the flattened step
    length: int  # tokens in the chunk
    key_slots: torch.Tensor  # [S] slots of positions 0..S-1 (S = context incl. the chunk)
    mask: torch.Tensor | None  # [1, 1, length, S], None when plain causal applies


@dataclass(frozen=True)
class DecodeBatch:
    token_index: torch.Tensor  # [Bd] offsets of the decode tokens in the flattened step
    key_slots: torch.Tensor  # [Bd, S_max]
    mask: torch.Tensor  # [Bd, 1, 1, S_max]


@dataclass(frozen=True)
class PagedBatch:
    """Where each token of one step writes its k/v and which keys each query reads."""

    slot_mapping: torch.Tensor  # [N]
    prefills: list[PrefillSegment]
    decode: DecodeBatch | None


@dataclass(frozen=True)
class SequenceChunk:
    """One sequence's share of a step: tokens at positions [start, start + length)."""

    start: int
    length: int
    block_table: list[int]


def _slots(block_table: list[int], count: int, block_size: int) -> list[int]:
    return [block_table[i // block_size] * block_size + i % block_size for i in range(count)]


def build_paged_batch(
    chunks: list[SequenceChunk],
    *,
    block_size: int,
    sliding_window: int | None,
    device: torch.device | str,
) -> PagedBatch:
    slot_mapping: list[int] = []
    prefills: list[PrefillSegment] = []
    decode_index: list[int] = []
    decode_slots: list[list[int]] = []
    offset = 0
    for chunk in chunks:
        context = chunk.start + chunk.length
        slots = _slots(chunk.block_table, context, block_size)
        slot_mapping.extend(slots[chunk.start :])
        if chunk.length == 1:
            decode_index.append(offset)
            decode_slots.append(slots)
        else:
            key_slots = torch.tensor(slots, device=device)
            prefills.append(
                PrefillSegment(
                    offset, chunk.length, key_slots, _prefill_mask(chunk, sliding_window, device)
                )
            )
        offset += chunk.length
    decode = None
    if decode_index:
        width = max(len(s) for s in decode_slots)
        lengths = torch.tensor([len(s) for s in decode_slots], device=device)
        padded = torch.tensor([s + [0] * (width - len(s)) for s in decode_slots], device=device)
        keys = torch.arange(width, device=device)
        allowed = keys < lengths[:, None]  # [Bd, S]
        if sliding_window is not None:
            allowed &= keys >= lengths[:, None] - sliding_window
        decode = DecodeBatch(
            torch.tensor(decode_index, device=device), padded, allowed[:, None, None, :]
        )
    return PagedBatch(torch.tensor(slot_mapping, device=device), prefills, decode)


def _prefill_mask(
    chunk: SequenceChunk, sliding_window: int | None, device: torch.device | str
) -> torch.Tensor | None:
    context = chunk.start + chunk.length
    if chunk.start == 0 and (sliding_window is None or context <= sliding_window):
        return None  # plain causal: SDPA's is_causal (top-left aligned) is right here
    queries = torch.arange(chunk.start, context, device=device)[:, None]  # [T, 1]
    keys = torch.arange(context, device=device)
    allowed = keys <= queries
    if sliding_window is not None:
        allowed &= keys > queries - sliding_window
    return allowed[None, None]  # [1, 1, T, S]


class PagedAttention:
    """`AttentionContext` over a `PagedKVCache` for one flattened engine step."""

    def __init__(self, cache: PagedKVCache, batch: PagedBatch) -> None:
        self.cache = cache
        self.batch = batch

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [1, H, N, Hd], k/v [1, K, N, Hd]
        keys, values = self.cache.layer(layer)
        slots = self.batch.slot_mapping
        keys.index_copy_(0, slots, k[0].transpose(0, 1))
        values.index_copy_(0, slots, v[0].transpose(0, 1))
        gqa = k.shape[1] != q.shape[1]
        out = torch.empty_like(q)

        decode = self.batch.decode
        if decode is not None:
            q_dec = q[0, :, decode.token_index].transpose(0, 1).unsqueeze(2)  # [Bd, H, 1, Hd]
            k_dec = keys[decode.key_slots].transpose(1, 2)  # [Bd, K, S, Hd]
            v_dec = values[decode.key_slots].transpose(1, 2)
            o = F.scaled_dot_product_attention(
                q_dec, k_dec, v_dec, attn_mask=decode.mask, enable_gqa=gqa
            )
            out[0, :, decode.token_index] = o.squeeze(2).transpose(0, 1)

        for seg in self.batch.prefills:
            end = seg.start + seg.length
            k_seg = keys[seg.key_slots].transpose(0, 1).unsqueeze(0)  # [1, K, S, Hd]
            v_seg = values[seg.key_slots].transpose(0, 1).unsqueeze(0)
            out[:, :, seg.start : end] = F.scaled_dot_product_attention(
                q[:, :, seg.start : end],
                k_seg,
                v_seg,
                attn_mask=seg.mask,
                is_causal=seg.mask is None,
                enable_gqa=gqa,
            )
        return out
