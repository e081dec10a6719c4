"""The synchronous engine core: requests in, one model step per `step()`, chunks out.

`LLMEngine` owns the scheduler (plain Python), an `Executor` (the model on one device or a
sharded replica), per-choice sampling state and detokenizers. It is driven by
`AsyncEngine`, which runs `step()` in a background loop; tests and benchmarks may drive
it directly.

Constrained requests (`GenerationRequest.constraint`) give each choice a grammar matcher
(`workers.engine.grammar`). A step starts filling the constrained rows' next-token masks on
a background thread before the forward pass and waits for them after it, so the masks cost
the step almost nothing while the model runs; the sampler then masks those rows only, so
constrained and free requests share one batch. A choice whose grammar is complete after its
token finishes with "stop".
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from workers.engine.block_manager import BlockManager
from workers.engine.config import EngineConfig
from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.grammar import Advance, ChoiceMatcher, GrammarBackend
from workers.engine.model_runner import Executor, StepInput
from workers.engine.paged_attention import SequenceChunk
from workers.engine.request import (
    FinishReason,
    GenerationRequest,
    TokenChunk,
    TokenLogprob,
    Usage,
    token_limit,
)
from workers.engine.sampler import SamplingState, new_sampling_state, sample
from workers.engine.scheduler import Scheduler, SchedulerOutput
from workers.engine.sequence import Sequence
from workers.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Choice:
    index: int
    seq: Sequence
    sampling: SamplingState
    detokenizer: IncrementalDetokenizer
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    matcher: ChoiceMatcher | None = None  # where its output stands in the request's grammar


@dataclass
class _RequestState:
    request: GenerationRequest
    stop_ids: frozenset[int]
    choices: list[_Choice] = field(default_factory=list)

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=len(self.request.prompt_token_ids),
            completion_tokens=sum(c.completion_tokens for c in self.choices),
        )


class LLMEngine:
    def __init__(
        self,
        executor: Executor,
        *,
        max_seq_len: int,
        eos_token_ids: frozenset[int] = frozenset(),
        tokenizer: Tokenizer | None = None,
        config: EngineConfig | None = None,
        vocab_size: int | None = None,
    ) -> None:
        """`vocab_size`: the width of the model's logits (grammar masks are that wide);
        None takes the tokenizer's vocabulary size."""
        self.executor = executor
        self.max_seq_len = max_seq_len
        self.eos_token_ids = eos_token_ids
        self.tokenizer = tokenizer
        if vocab_size is None:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else 0
        self.grammar = GrammarBackend(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_token_ids)
        config = config or EngineConfig()
        self.block_manager = BlockManager(
            executor.num_blocks, executor.block_size, prefix_caching=config.prefix_caching
        )
        self.scheduler = Scheduler(config, self.block_manager)
        self._requests: dict[str, _RequestState] = {}
        self._by_seq: dict[int, tuple[_RequestState, _Choice]] = {}
        self.steps = 0

    # -- requests -----------------------------------------------------------------------
    def max_tokens_for(self, request: GenerationRequest) -> int:
        """The request's token limit, checked against the context; ValueError says why."""
        return token_limit(request, self.max_seq_len)

    def validate(self, request: GenerationRequest) -> int:
        """Every check `add_request` makes, without changing any state; returns the
        request's token limit."""
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already running")
        max_tokens = self.max_tokens_for(request)
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(request.prompt_token_ids) + max_tokens > capacity:
            raise ValueError(
                f"prompt + max_tokens ({len(request.prompt_token_ids) + max_tokens} tokens) "
                f"exceed this replica's KV cache of {capacity} tokens; lower max_tokens"
            )
        if request.constraint is not None:
            self.grammar.check(request.constraint)  # compiles (cached) against the vocabulary
        return max_tokens

    def add_request(self, request: GenerationRequest) -> None:
        """Validate `request` and queue it (ValueError says what to change)."""
        self.add_validated(request, self.validate(request))

    def add_validated(self, request: GenerationRequest, max_tokens: int) -> None:
        """Queue a request `validate` accepted, with the token limit it returned."""
        stop_ids = frozenset(request.stop_token_ids)
        if not request.ignore_eos:
            stop_ids |= self.eos_token_ids
        if request.constraint is not None:
            # A grammar allows its eos tokens only once its output is complete, so there they
            # end the choice even under ignore_eos (they are not text to stream).
            stop_ids |= self.grammar.eos_token_ids
        state = _RequestState(request, stop_ids)
        for index in range(request.n):
            seq = Sequence(list(request.prompt_token_ids), max_tokens)
            sampling = new_sampling_state(
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                seed=request.seed,
                choice=index,
                num_logprobs=request.logprobs,
            )
            detok = IncrementalDetokenizer(self.tokenizer, request.stop)
            matcher = None
            if request.constraint is not None:
                matcher = self.grammar.matcher(request.constraint)
            choice = _Choice(index, seq, sampling, detok, matcher=matcher)
            state.choices.append(choice)
            self._by_seq[seq.seq_id] = (state, choice)
        self._requests[request.request_id] = state
        for choice in state.choices:
            self.scheduler.add(choice.seq)

    def abort(self, request_id: str) -> Usage | None:
        """Stop a request now and free its KV blocks; returns its usage so far."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return None
        for choice in state.choices:
            if choice.finish_reason is None:
                choice.finish_reason = "cancelled"
                self.scheduler.finish(choice.seq)
            choice.matcher = None
            self._by_seq.pop(choice.seq.seq_id, None)
        return state.usage()

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # -- stepping -----------------------------------------------------------------------
    def step(self) -> list[TokenChunk]:
        plan = self.scheduler.schedule()
        if not plan.scheduled:
            return []
        step_input = self._step_input(plan)
        sampling_seqs = [item.seq for item in plan.scheduled if item.samples]
        choices = [self._by_seq[seq.seq_id][1] for seq in sampling_seqs]
        masks = self._start_masks(choices)  # computed while the model runs
        logits = self.executor.execute(step_input)
        bitmask = masks.result() if masks is not None else None
        self.scheduler.update(plan)
        self.steps += 1
        tokens, logprobs = sample(logits, [c.sampling for c in choices], bitmask)
        chunks = []
        for seq, token, logprob in zip(sampling_seqs, tokens, logprobs, strict=True):
            chunks.append(self._accept(seq, token, logprob))
        return chunks

    def _start_masks(self, choices: list[_Choice]) -> Future[torch.Tensor] | None:
        """Start the next-token masks of the constrained rows among `choices` (one row of
        logits each); None when no row is constrained."""
        rows = [(c.matcher, row) for row, c in enumerate(choices) if c.matcher is not None]
        if not rows:
            return None
        return self.grammar.submit_masks(rows, len(choices))

    def _step_input(self, plan: SchedulerOutput) -> StepInput:
        token_ids: list[int] = []
        positions: list[int] = []
        chunks: list[SequenceChunk] = []
        sample_rows: list[int] = []
        for item in plan.scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            token_ids.extend(seq.tokens_between(start, end))
            positions.extend(range(start, end))
            chunks.append(SequenceChunk(start, item.num_new_tokens, list(seq.block_table)))
            if item.samples:
                sample_rows.append(len(token_ids) - 1)
        return StepInput(token_ids, positions, chunks, sample_rows)

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> TokenChunk:
        state, choice = self._by_seq[seq.seq_id]
        seq.output_token_ids.append(token)
        choice.completion_tokens += 1
        new_ids: list[int] = []
        reason: FinishReason | None = None
        if token in state.stop_ids:
            reason = "stop"
        else:
            new_ids.append(token)
            grammar_done = self._advance_grammar(state, choice, token)
            if choice.detokenizer.add(token) or grammar_done:
                reason = "stop"
            elif seq.num_output_tokens >= seq.max_tokens or len(seq) >= self.max_seq_len:
                reason = "length"
        if reason is not None:
            self._finish(state, choice, reason)
        return TokenChunk(
            request_id=state.request.request_id,
            index=choice.index,
            token_ids=new_ids,
            text=choice.detokenizer.release(final=reason is not None),
            usage=state.usage(),
            finish_reason=reason,
            logprobs=[logprob] if logprob is not None else None,
        )

    def _advance_grammar(self, state: _RequestState, choice: _Choice, token: int) -> bool:
        """Feed the token to the choice's grammar; True when the choice must stop there (the
        grammar is complete, or refused a token its own mask allowed: logged, not raised,
        so one faulty matcher never fails the step for the whole batch)."""
        if choice.matcher is None:
            return False
        advance = choice.matcher.advance(token)
        if advance is Advance.REFUSED:
            log.warning(
                "request %s choice %d: the grammar refused token %d; finishing the choice: %s",
                state.request.request_id,
                choice.index,
                token,
                choice.matcher.error,
            )
        return advance is not Advance.CONTINUE

    def _finish(self, state: _RequestState, choice: _Choice, reason: FinishReason) -> None:
        choice.finish_reason = reason
        choice.matcher = None
        self.scheduler.finish(choice.seq)
        self._by_seq.pop(choice.seq.seq_id, None)
        if all(c.finish_reason is not None for c in state.choices):
            del self._requests[state.request.request_id]
