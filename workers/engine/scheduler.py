"""Iteration-level scheduling: which sequences run in the next model step, and how many
tokens each computes.

Each step first gives every running sequence its next tokens (one for a decoding sequence,
a chunk for one still prefilling), oldest first, then admits waiting sequences while the
token budget, the sequence limit and free KV blocks allow. Long prompts are prefilled in
chunks of at most the remaining budget, so a big prompt never stalls decoding for a whole
step. When a running sequence needs a block and none is free, the newest running sequence
is preempted: its blocks are freed and it waits to be recomputed from its tokens (nothing it
generated is lost). Plain Python; the engine applies the model's results via `update`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int  # tokens [num_computed_tokens, +num_new_tokens) run this step

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token, so it yields a new one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == len(self.seq)


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]
    preempted: list[Sequence]


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start, for metrics and tests

    def add(self, seq: Sequence) -> None:
        """Queue `seq`; the engine has checked that it fits the whole KV cache (a sequence
        that never fits would wait forever)."""
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        assert seq.num_prompt_tokens + seq.max_tokens <= capacity, "validated by the engine"
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSequence] = []
        preempted: list[Sequence] = []
        manager = self.block_manager

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            count = min(seq.num_uncomputed_tokens, budget)
            while not manager.can_append(seq, count):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                manager.append(seq, count)
                scheduled.append(ScheduledSequence(seq, count))
                budget -= count
                index += 1

        # Admit only when nothing had to make room this step: a preemption means memory is
        # short, and admitting would only preempt again.
        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            if not manager.can_allocate(seq):
                break
            self.waiting.popleft()
            manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            count = min(seq.num_uncomputed_tokens, budget)
            scheduled.append(ScheduledSequence(seq, count))
            budget -= count
        return SchedulerOutput(scheduled, preempted)

    def update(self, output: SchedulerOutput) -> None:
        """Record that the step ran: its tokens now have KV entries."""
        for item in output.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.register_computed(item.seq)

    def finish(self, seq: Sequence) -> None:
        """Retire a sequence (done or aborted) and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
