"""Scheduler: token budget, chunked prefill, sequence limit, recompute preemption."""

from __future__ import annotations

from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.scheduler import Scheduler, SchedulerOutput
from workers.engine.sequence import Sequence, SequenceStatus


def make(num_blocks: int = 64, block_size: int = 4, **config: int) -> Scheduler:
    engine_config = EngineConfig.model_validate(config)
    return Scheduler(engine_config, BlockManager(num_blocks, block_size))


def run_step(scheduler: Scheduler, token: int = 1) -> SchedulerOutput:
    """What the engine does after the model ran: mark computed, append sampled tokens."""
    out = scheduler.schedule()
    sampled = [item.seq for item in out.scheduled if item.samples]
    scheduler.update(out)
    for s in sampled:
        s.output_token_ids.append(token)
        if s.num_output_tokens >= s.max_tokens:
            scheduler.finish(s)
    return out


def test_long_prompts_are_prefilled_in_chunks_under_the_token_budget() -> None:
    scheduler = make(max_num_batched_tokens=8)
    s = Sequence(list(range(20)), max_tokens=2)
    scheduler.add(s)
    chunks = [run_step(scheduler).scheduled[0].num_new_tokens for _ in range(3)]
    assert chunks == [8, 8, 4]
    assert s.num_output_tokens == 1  # the last chunk reached the end of the prompt


def test_running_sequences_decode_before_new_prompts_are_admitted() -> None:
    scheduler = make(max_num_batched_tokens=10)
    first = Sequence([1] * 9, max_tokens=5)
    scheduler.add(first)
    run_step(scheduler)  # first is prefilled
    second = Sequence([2] * 30, max_tokens=5)
    scheduler.add(second)
    out = run_step(scheduler)
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(first, 1), (second, 9)]


def test_max_num_seqs_caps_the_running_set() -> None:
    scheduler = make(max_num_seqs=2)
    seqs = [Sequence([i], max_tokens=3) for i in range(3)]
    for s in seqs:
        scheduler.add(s)
    out = run_step(scheduler)
    assert [i.seq for i in out.scheduled] == seqs[:2]
    assert list(scheduler.waiting) == [seqs[2]]


def test_finished_sequences_leave_at_once_and_free_their_blocks() -> None:
    scheduler = make(num_blocks=4)
    s = Sequence([1, 2, 3], max_tokens=1)
    scheduler.add(s)
    run_step(scheduler)
    assert s.status is SequenceStatus.FINISHED and not scheduler.running
    assert scheduler.block_manager.num_free_blocks == 4


def test_out_of_blocks_preempts_the_newest_which_later_resumes() -> None:
    scheduler = make(num_blocks=3, block_size=2)
    old = Sequence([1, 2], max_tokens=4)
    new = Sequence([3, 4], max_tokens=4)
    scheduler.add(old)
    scheduler.add(new)
    run_step(scheduler, token=7)  # both prefilled: 2 blocks, each holds [p, p]
    out = run_step(scheduler, token=8)  # old needs a 2nd block (1 free), then new needs one
    assert out.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.block_table == []
    assert new.output_token_ids == [7]  # generated tokens are kept, then recomputed
    while scheduler.has_work():
        run_step(scheduler, token=9)
    assert old.output_token_ids == [7, 8, 9, 9]
    assert new.output_token_ids == [7, 9, 9, 9] and new.num_preemptions == 1
    assert scheduler.block_manager.num_free_blocks == 3
