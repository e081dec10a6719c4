"""Where a replica's weights come from: a built-in preset or a checkpoint directory.

A `ModelSource` is plain, validated data (no torch: the control plane builds and checks it),
so it travels to Ray actors (every rank of a sharded replica loads the same model from it)
and maps 1:1 to the serving config. `workers.model.loading.load_model` turns it into weights.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.model.args import ModelArgs
from workers.model.hf_config import read_args
from workers.model.presets import preset, runnable_preset

DTypeName = Literal["fp32", "bf16", "fp16"]


class ModelSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str | None = Field(default=None, description="built-in preset, e.g. dbrx-tiny")
    checkpoint: str | None = Field(
        default=None, description="Hugging Face checkpoint directory (config.json + safetensors)"
    )
    tokenizer: str | None = Field(
        default=None,
        description="cl100k_base, dbrx or a tokenizer directory; default: the preset's, or "
        "the checkpoint directory",
    )
    dtype: DTypeName = "fp32"
    seed: int = Field(default=0, description="weight seed of a preset")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.preset is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of `preset` or `checkpoint`")
        if self.preset is not None:
            runnable_preset(self.preset)  # ValueError naming the choices / the checkpoint need
        return self

    def args(self) -> ModelArgs:
        if self.preset is not None:
            return preset(self.preset).args
        assert self.checkpoint is not None
        return read_args(self.checkpoint)

    def tokenizer_name(self) -> str:
        if self.tokenizer is not None:
            return self.tokenizer
        if self.preset is not None:
            return preset(self.preset).tokenizer
        assert self.checkpoint is not None
        return self.checkpoint
