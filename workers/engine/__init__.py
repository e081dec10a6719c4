"""The inference engine: continuous batching over a paged KV cache, with streaming.

Bookkeeping (`sequence`, `block_manager`, `scheduler`) is plain Python; `paged_attention`
and `model_runner` hold the tensors; `LLMEngine` runs one step at a time and `AsyncEngine`
streams `TokenChunk`s for many concurrent `generate(request)` calls. `build_engine` makes
a ready engine for a model on one device. `aggregate` folds a stream into one
`Completion`; `embed` returns pooled hidden states (`embedding`). `InstantEngine` answers
without a model, to measure the serving path alone (`instant`).
"""

from workers.engine.async_engine import (
    AsyncEngine,
    EngineDeadError,
    EngineDrainingError,
    torch_thread,
)
from workers.engine.block_manager import BlockManager
from workers.engine.builder import EngineConfig, build_engine, engine_over
from workers.engine.embedding import EmbeddingResult
from workers.engine.engine import LLMEngine
from workers.engine.instant import InstantEngine, instant_engine_factory
from workers.engine.model_runner import Executor, LocalExecutor, ModelRunner, StepInput
from workers.engine.request import (
    Completion,
    GenerationRequest,
    TokenChunk,
    TokenLogprob,
    Usage,
    aggregate,
)
from workers.engine.scheduler import Scheduler, SchedulerConfig
from workers.engine.sequence import Sequence, SequenceStatus

__all__ = [
    "AsyncEngine",
    "BlockManager",
    "Completion",
    "EmbeddingResult",
    "EngineConfig",
    "EngineDeadError",
    "EngineDrainingError",
    "Executor",
    "GenerationRequest",
    "InstantEngine",
    "LLMEngine",
    "LocalExecutor",
    "ModelRunner",
    "Scheduler",
    "SchedulerConfig",
    "Sequence",
    "SequenceStatus",
    "StepInput",
    "TokenChunk",
    "TokenLogprob",
    "Usage",
    "aggregate",
    "build_engine",
    "engine_over",
    "instant_engine_factory",
    "torch_thread",
]
