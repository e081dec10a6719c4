"""Engine sizing and construction for a model held in this process."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from workers.engine.engine import LLMEngine
from workers.engine.model_runner import Executor, LocalExecutor
from workers.engine.scheduler import SchedulerConfig
from workers.model import ModelArgs, MoETransformer
from workers.tokenizer import Tokenizer


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(default=16, ge=1, le=1024, description="tokens per KV block")
    kv_cache_tokens: int = Field(
        default=65536, ge=1, description="KV-cache capacity in tokens, all sequences together"
    )
    max_num_seqs: int = Field(default=64, ge=1, description="sequences in one step at most")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, description="new tokens in one step (prefill chunks + decodes)"
    )
    prefix_caching: bool = Field(default=True, description="reuse KV blocks of equal prefixes")

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_cache_tokens // self.block_size)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens
        )


def build_engine(
    model: MoETransformer,
    config: EngineConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> LLMEngine:
    """An engine over `model`, on the model's device."""
    config = config or EngineConfig()
    executor = LocalExecutor(model, num_blocks=config.num_blocks, block_size=config.block_size)
    return engine_over(executor, model.args, config, tokenizer=tokenizer)


def engine_over(
    executor: Executor,
    args: ModelArgs,
    config: EngineConfig,
    *,
    tokenizer: Tokenizer | None = None,
) -> LLMEngine:
    """An engine over any executor (one device, or the ranks of a sharded replica)."""
    eos = set(tokenizer.stop_token_ids) if tokenizer is not None else set()
    if args.eos_token_id is not None:
        eos.add(args.eos_token_id)
    return LLMEngine(
        executor,
        max_seq_len=args.max_seq_len,
        eos_token_ids=frozenset(eos),
        tokenizer=tokenizer,
        scheduler_config=config.scheduler_config(),
        prefix_caching=config.prefix_caching,
    )
