"""The asyncio face of the engine: many concurrent `generate()` streams, one step loop.

A background task runs `LLMEngine.step()` in a worker thread (the model call releases the
GIL, so the event loop keeps accepting requests and streaming tokens). The engine is only
touched between steps: new requests and aborts are queued by the event loop and applied by
the loop before the next step, so no lock is needed and no step sees half a change.

Threads: every torch call of a process should come from one thread. With GNU OpenMP each
thread that starts parallel work gets its own pool of worker threads; once two pools exist
on a machine with fewer cores than pool threads, OpenMP stops spin-waiting between
parallel regions, and a step ran 12-17% slower on this 2-core machine. So build the model in
`torch_thread()` and hand that same thread to `AsyncEngine(step_thread=...)`.

Embeddings and any other model call outside a step go through `run_on_torch_thread`: the
same single thread runs it between two steps, never concurrently with one. `embed` submits
one input at a time, so a long batch of inputs delays running streams by one input's
forward at most, not by the whole batch.

Cancellation: when a consumer stops iterating (client gone, `aclose()`, task cancelled) the
request is aborted before the next step, which frees its KV blocks; the usage it had
reached is logged and returned by `abort()` / kept in `cancelled_usage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from workers.engine.embedding import EmbeddingResult, check_embedding_inputs
from workers.engine.engine import LLMEngine
from workers.engine.request import GenerationRequest, TokenChunk, Usage

log = logging.getLogger(__name__)

T = TypeVar("T")


def torch_thread() -> ThreadPoolExecutor:
    """A single thread to build the model in and to run every step on."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")


class EngineDeadError(RuntimeError):
    """The step loop failed; the replica must be replaced."""


class EngineDrainingError(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclass
class _Stream:
    queue: asyncio.Queue[TokenChunk | BaseException]
    open_choices: int


class AsyncEngine:
    def __init__(
        self,
        engine: LLMEngine,
        *,
        step_thread: ThreadPoolExecutor | None = None,
        cancelled_history: int = 1024,
    ) -> None:
        self.engine = engine
        self._streams: dict[str, _Stream] = {}
        self._to_add: list[tuple[GenerationRequest, int]] = []  # with their token limits
        self._to_abort: dict[str, asyncio.Future[Usage | None]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stepper = step_thread or torch_thread()  # see "Threads" above
        self._error: BaseException | None = None
        self._draining = False
        self._unary_in_flight = 0  # embed calls; drain waits for them as for streams
        self._history = cancelled_history
        self.cancelled_usage: OrderedDict[str, Usage] = OrderedDict()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")

    def check_health(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"engine step loop failed: {self._error!r}") from self._error
        if self._task is not None and self._task.done():
            raise EngineDeadError("engine step loop has stopped")

    @property
    def num_in_flight(self) -> int:
        """Requests running now: generation streams and embedding calls."""
        return len(self._streams) + self._unary_in_flight

    def stats(self) -> dict[str, int]:
        """Occupancy: in-flight requests, KV blocks, preemptions, prefix-cache hits, steps."""
        core = self.engine
        blocks = core.block_manager
        return {
            "in_flight_requests": self.num_in_flight,
            "kv_blocks_total": blocks.num_blocks,
            "kv_blocks_free": blocks.num_free_blocks,
            "preemptions": core.scheduler.num_preemptions,
            "prefix_cache_hit_tokens": blocks.prefix_hits,
            "prefix_cache_query_tokens": blocks.prefix_queries,
            "steps": core.steps,
        }

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, let running ones finish (up to `timeout_s`), then stop.

        Returns False if requests were still running at the timeout (they are aborted).
        """
        self._draining = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.num_in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        drained = not self.num_in_flight
        for request_id in list(self._streams):
            # The consumer hears why its stream ends instead of waiting for a last chunk.
            self._fail(request_id, EngineDrainingError("the replica shut down mid-request"))
            await self.abort(request_id)
        await self.stop()
        return drained

    async def stop(self) -> None:
        """Stop the step loop; returns once no step is running any more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            # A step already on the torch thread keeps running; the thread runs one thing at
            # a time, so this no-op finishes only after it.
            await asyncio.wrap_future(self._stepper.submit(lambda: None))
            # Aborts asked for while the loop was stopping would otherwise wait forever:
            # with no step running, they are applied here.
            self._apply_pending()

    async def close(self) -> None:
        """Stop, then release the executor (rank actors, process group) on the torch thread."""
        await self.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._stepper, self.engine.executor.shutdown)
        self.engine.grammar.close()
        self._stepper.shutdown(wait=False)

    async def run_on_torch_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the step thread between two steps (never concurrently with one)."""
        return await asyncio.wrap_future(self._stepper.submit(fn))

    # -- requests -----------------------------------------------------------------------
    def _check_accepting(self) -> None:
        self.check_health()
        if self._draining:
            raise EngineDrainingError("this replica is draining; retry on another one")

    async def embed(self, inputs: list[list[int]]) -> EmbeddingResult:
        """One pooled, unit-length vector per token list (see `workers.engine.embedding`)."""
        self._check_accepting()
        check_embedding_inputs(inputs, self.engine.max_seq_len)
        embed = self.engine.executor.embed
        self._unary_in_flight += 1
        try:
            vectors = [
                (await self.run_on_torch_thread(partial(embed, token_ids))).tolist()
                for token_ids in inputs
            ]
        finally:
            self._unary_in_flight -= 1
        return EmbeddingResult.of(inputs, vectors)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        """Stream the request's chunks; the last one of each choice has `finish_reason`."""
        self._check_accepting()
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        if request.constraint is not None:
            # Compiling a grammar (and, the first time, indexing the vocabulary: up to 2 s)
            # runs off the event loop so running streams keep flowing; `validate` then finds
            # it compiled. A bad grammar raises ValueError here, as `validate` would.
            await asyncio.to_thread(self.engine.grammar.check, request.constraint)
        max_tokens = self.engine.validate(request)  # raises ValueError with what to change
        self.start()
        stream = _Stream(asyncio.Queue(), request.n)
        self._streams[request.request_id] = stream
        self._to_add.append((request, max_tokens))
        self._wakeup.set()
        finished = False
        try:
            while stream.open_choices:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    stream.open_choices -= 1
                yield item
            finished = True
        finally:
            if not finished:
                usage = await asyncio.shield(self.abort(request.request_id))
                log.info("request %s cancelled; usage so far %s", request.request_id, usage)
            self._streams.pop(request.request_id, None)

    async def abort(self, request_id: str) -> Usage | None:
        """Abort before the next step (freeing its KV blocks); returns its usage so far."""
        future = self._to_abort.get(request_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._to_abort[request_id] = future
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._apply_pending()
        return await future

    # -- the loop -----------------------------------------------------------------------
    def _apply_pending(self) -> None:
        for request, max_tokens in self._to_add:
            if request.request_id in self._to_abort:
                continue  # cancelled before it ever ran
            self.engine.add_validated(request, max_tokens)
        self._to_add.clear()
        for request_id, future in self._to_abort.items():
            usage = self.engine.abort(request_id)
            if usage is not None:
                self.cancelled_usage[request_id] = usage
                while len(self.cancelled_usage) > self._history:
                    self.cancelled_usage.popitem(last=False)
            if not future.done():
                future.set_result(usage)
        self._to_abort.clear()

    async def _run(self) -> None:
        try:
            while True:
                self._apply_pending()
                if not self.engine.has_unfinished():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                loop = asyncio.get_running_loop()
                chunks = await loop.run_in_executor(self._stepper, self.engine.step)
                for chunk in chunks:
                    stream = self._streams.get(chunk.request_id)
                    if stream is not None:
                        stream.queue.put_nowait(chunk)
                await asyncio.sleep(0)  # let consumers run between steps
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failed step poisons every request in flight
            log.exception("engine step failed")
            self._error = exc
            for request_id in list(self._streams):
                self._fail(request_id, EngineDeadError(f"engine step failed: {exc!r}"))
            for future in self._to_abort.values():
                if not future.done():
                    future.set_result(None)
            # The error is kept for check_health(); re-raising would leave an exception on
            # a task nobody awaits, logged at some random garbage collection later.

    def _fail(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.queue.put_nowait(exc)
