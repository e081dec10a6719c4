"""`EngineConfig`: the one description of an engine's capacity and batching knobs — used by
the engine and its scheduler, by the serving config (`workers.serve.config`) and by the
control plane's replica defaults. Pure data (no torch), validated where it is built."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(default=16, ge=1, le=1024, description="tokens per KV block")
    kv_cache_tokens: int = Field(
        default=16384,
        ge=16,
        description="KV-cache capacity in tokens, all sequences of the replica together",
    )
    max_num_seqs: int = Field(default=32, ge=1, description="sequences in one step at most")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, description="new tokens in one step (prefill chunks + decodes)"
    )
    prefix_caching: bool = Field(default=True, description="reuse KV blocks of equal prefixes")

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_cache_tokens // self.block_size)
