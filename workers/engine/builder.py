"""Engine sizing and construction for a model held in this process."""

from __future__ import annotations

from workers.engine.config import EngineConfig
from workers.engine.engine import LLMEngine
from workers.engine.model_runner import Executor, LocalExecutor
from workers.model.args import ModelArgs
from workers.model.transformer import MoETransformer
from workers.tokenizer import Tokenizer


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
        config=config,
        vocab_size=args.vocab_size,
    )
