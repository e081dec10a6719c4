"""Expert parallelism: rank r owns experts [r*E/W, (r+1)*E/W); everything else is replicated.

Every rank enters each MoE layer with the same N tokens (attention is replicated), so the
routing work is split without talking: rank r routes only its own contiguous chunk of the
rows (`torch.tensor_split`, whose chunk sizes every rank can compute). Then per layer:

1. route the chunk, sort its (token, slot) pairs by expert — the same order `MoE` uses, so
   the slots bound for each owning rank are contiguous and in rank order;
2. all_to_all the per-rank slot counts, then the token rows and their expert ids;
3. run the local experts over what arrived (re-sorted by expert: rows from different source
   ranks interleave experts), with the same GLU math as `MoE`;
4. all_to_all the results back, apply the routing weights, index_add onto the owning tokens;
5. all_gather the chunks, so every rank leaves with the full [N, D] output.

A rank may own no tokens (N < world size) or receive no rows; collectives still run, with
empty tensors, so every rank takes part in every call.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from workers.model.args import ModelArgs
from workers.model.moe import MoE
from workers.parallel.tensor_parallel import owned_parameter


class ExpertParallelMoE(MoE):
    """One rank's experts of a `MoE`; dispatch and combine run over `group`.

    `n_experts` stays the global count (what the router picks from); `w13`/`w2` hold only
    the `local_experts` experts starting at global id `first_expert`.
    """

    def __init__(
        self,
        full: MoE,
        args: ModelArgs,
        rank: int,
        world_size: int,
        group: ProcessGroup | None,
    ) -> None:
        # Shapes only (no memory); the rank's experts are assigned below.
        with torch.device("meta"):
            super().__init__(args)
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.router = full.router
        self.local_experts = full.n_experts // world_size
        self.first_expert = rank * self.local_experts
        owned = slice(self.first_expert, self.first_expert + self.local_experts)
        self.w13 = owned_parameter(full.w13, full.w13[owned])  # [E/W, 2F, D]
        self.w2 = owned_parameter(full.w2, full.w2[owned])  # [E/W, F, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D], identical on every rank -> [N, D], identical on every rank."""
        chunks = torch.tensor_split(x, self.world_size)
        mine = chunks[self.rank]  # [n, D], n may be 0
        weights, experts = self.router(mine)  # [n, k]
        top_k = experts.shape[1]
        flat_experts = experts.flatten()
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // top_k
        sorted_experts = flat_experts[order]
        routed = mine[token_of_slot]  # [n*k, D] in expert order, hence in owner-rank order

        send_counts = torch.bincount(
            sorted_experts // self.local_experts, minlength=self.world_size
        )
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        sends, recvs = send_counts.tolist(), recv_counts.tolist()
        arrived = self._exchange(routed, recvs, sends)
        arrived_experts = self._exchange(sorted_experts, recvs, sends)

        computed = self._run_local_experts(arrived, arrived_experts - self.first_expert)
        returned = self._exchange(computed, sends, recvs)  # back in `routed` order
        returned = returned * weights.flatten()[order].unsqueeze(-1)
        combined = torch.zeros_like(mine).index_add_(0, token_of_slot, returned)
        return self._gather_chunks(combined, [len(chunk) for chunk in chunks])

    def _exchange(self, rows: torch.Tensor, recvs: list[int], sends: list[int]) -> torch.Tensor:
        """Send rows[sum(sends[:r]) : sum(sends[:r+1])] to rank r; receive recvs[r] from r."""
        out = rows.new_empty((sum(recvs), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), recvs, sends, group=self.group)
        return out

    def _run_local_experts(self, rows: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
        """rows [M, D] with local expert ids [M] (grouped by source rank) -> [M, D]."""
        order = local_ids.argsort(stable=True)
        counts = torch.bincount(local_ids, minlength=self.local_experts)
        out_sorted = self.experts(self, rows[order], counts)  # this rank's expert kernel
        out = torch.empty_like(out_sorted)
        out[order] = out_sorted
        return out

    def _gather_chunks(self, chunk: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """All ranks' chunks (sizes known to all) concatenated in rank order: [N, D]."""
        # all_gather wants equal shapes on every backend: pad to the largest chunk.
        longest = max(sizes)
        padded = chunk.new_zeros((longest, *chunk.shape[1:]))
        padded[: len(chunk)] = chunk
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded, group=self.group)
        return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)])
