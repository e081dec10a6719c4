"""LLMServer without Ray: the replica class with an injected engine, as Serve would drive it."""

from __future__ import annotations

import asyncio

import pytest

from tests.workers.engine.conftest import greedy, small_engine, tokens_of
from workers.engine.async_engine import AsyncEngine, EngineDeadError
from workers.model.loading import load_model
from workers.model.source import ModelSource
from workers.model.transformer import MoETransformer
from workers.serve.config import WorkerAppConfig
from workers.serve.server import LLMServer

# Ray Serve awaits `async def __del__` itself at shutdown; when the garbage collector later
# calls it again outside Serve, Python warns that the coroutine was never awaited.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__':RuntimeWarning")


@pytest.fixture(scope="module")
def model() -> MoETransformer:
    return load_model(ModelSource(preset="dbrx-tiny"))


def test_replica_streams_reports_stats_and_drains_on_shutdown(model: MoETransformer) -> None:
    config = WorkerAppConfig(model=ModelSource(preset="dbrx-tiny"), graceful_shutdown_timeout_s=5)
    server = LLMServer(config, engine_factory=lambda _: AsyncEngine(small_engine(model)))

    async def scenario() -> None:
        request = greedy([1, 2, 3], 6, "r").model_dump()  # what a handle call may carry
        chunks = [chunk async for chunk in server.generate(request)]
        assert len(tokens_of(chunks)) == 6 and chunks[-1].usage.completion_tokens == 6
        stats = await server.stats()
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"] and stats["steps"] == 6
        await server.check_health()
        await server.__del__()
        with pytest.raises(Exception, match="draining"):
            await anext(server.generate(greedy([1], 2, "late")))

    asyncio.run(scenario())


def test_a_dead_engine_fails_the_health_check(model: MoETransformer) -> None:
    engine = AsyncEngine(small_engine(model))
    server = LLMServer(
        WorkerAppConfig(model=ModelSource(preset="dbrx-tiny")), engine_factory=lambda _: engine
    )
    engine._error = RuntimeError("device lost")  # what a failed step leaves behind

    async def scenario() -> None:
        with pytest.raises(EngineDeadError, match="device lost"):
            await server.check_health()

    asyncio.run(scenario())
