from __future__ import annotations

import pytest
import torch

from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.engine import LLMEngine
from workers.engine.request import GenerationRequest, TokenChunk
from workers.model.loading import from_preset
from workers.model.transformer import MoETransformer
from workers.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="session")
def tiny_model() -> MoETransformer:
    return from_preset("dbrx-tiny", seed=0)


@pytest.fixture(scope="session")
def cl100k() -> Tokenizer:
    return load_tokenizer("cl100k_base")


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 100_000, (n,), generator=generator).tolist() for n in lengths]


def greedy(prompt: list[int], max_tokens: int, request_id: str, **kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {
            "request_id": request_id,
            "prompt_token_ids": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            **kw,
        }
    )


def run_to_end(engine: LLMEngine, requests: list[GenerationRequest]) -> dict[str, list[TokenChunk]]:
    chunks: dict[str, list[TokenChunk]] = {r.request_id: [] for r in requests}
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        for chunk in engine.step():
            chunks[chunk.request_id].append(chunk)
    return chunks


def tokens_of(chunks: list[TokenChunk], index: int = 0) -> list[int]:
    return [t for c in chunks if c.index == index for t in c.token_ids]


def small_engine(model: MoETransformer, **config: object) -> LLMEngine:
    return build_engine(model, EngineConfig.model_validate(config))
