"""The parts of issue 14's findings 7 and 8 that need no server: the bounds `PromptIds`
judges a prompt by before tokenizing it are sound (a prompt's length never promises more
tokens than it has, for cl100k and for the Hugging Face pipelines that get a bound; other
pipelines get none); the limiter's `check` refuses exactly what `reserve` would, recording
nothing (in-process and Redis); the body read stops at `gateway.max_body_bytes`; and the
callers `QueryTargets.caller` authenticates before a body is read are cached and shared like
resolutions."""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
from pathlib import Path
from typing import Any

import pytest

from control_plane.auth.caller import Caller
from control_plane.errors import InvalidParameter, Unauthenticated
from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from control_plane.query.ratelimit.limiter import RateLimited, RateLimiter
from control_plane.query.ratelimit.rules import LimitRule
from control_plane.query.requests import (
    CL100K_MAX_TOKEN_BYTES,
    PromptIds,
    QueryKind,
    Tokenizers,
    max_chars_per_token,
    parse_request,
)
from control_plane.query.targets import QueryTarget, QueryTargets
from tests.control_plane.domain_factories import query_target, served_entity
from tests.control_plane.ratelimit_support import Factory, make_caller, run
from tests.control_plane.test_query_limits import CONTEXT, CountingCl100k
from workers.tokenizer import load_tokenizer


# -- the bounds are sound ----------------------------------------------------------------------
def test_the_cl100k_bound_is_its_longest_token_and_never_overestimates() -> None:
    from workers.tokenizer import cl100k_encoding

    longest = max(map(len, cl100k_encoding().token_byte_values()))
    assert longest == CL100K_MAX_TOKEN_BYTES
    tokenizer = load_tokenizer("cl100k_base")
    assert max_chars_per_token("cl100k_base", tokenizer) == CL100K_MAX_TOKEN_BYTES
    rng = random.Random(11)
    texts = [
        " " * (CL100K_MAX_TOKEN_BYTES * 10),  # the longest token, ten times: exactly 10
        "=" * 5000,
        "-" * 5000,
        "a" * 5000,
        "".join(rng.choices(string.printable, k=5000)),
        "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(2000)),
        "😀" * 1000,
        "\ud800" * 10,  # a lone surrogate: tiktoken replaces it
    ]
    for text in texts:
        least = -(-len(text) // CL100K_MAX_TOKEN_BYTES)
        assert least <= len(tokenizer.encode(text)), text[:20]
    assert len(tokenizer.encode(" " * (CL100K_MAX_TOKEN_BYTES * 10))) == 10  # tight


def test_prompt_ids_judge_length_first_then_exactly() -> None:
    tokenizer = CountingCl100k()
    tokenizers = Tokenizers(lambda _name: tokenizer)
    entity = served_entity("e")
    small = PromptIds(parse_request(QueryKind.COMPLETIONS, {"prompt": "hi"}), tokenizers, 20)
    assert not small.large and small.least_tokens(entity) == [1]
    text = " " * (CL100K_MAX_TOKEN_BYTES * CONTEXT)  # exactly the context, in tokens
    body = parse_request(QueryKind.COMPLETIONS, {"prompt": text})
    prompt = PromptIds(body, tokenizers, len(text) + 20)
    assert prompt.large and prompt.least_tokens(entity) == [CONTEXT]
    with pytest.raises(InvalidParameter, match="at least 4096 tokens; this model's context is"):
        prompt.refuse_past_context(entity)
    assert tokenizer.calls == 0
    body = parse_request(QueryKind.COMPLETIONS, {"prompt": "hello " * 5000})
    fits = PromptIds(body, tokenizers)  # no size hint: its characters are counted
    assert fits.large
    fits.refuse_past_context(entity)  # at least 235 tokens by its length: it may fit
    ids = asyncio.run(fits.tokenized(entity))  # in a worker thread
    assert tokenizer.calls == 1 and fits.least_tokens(entity) == [len(ids[0])] == [5001]
    with pytest.raises(InvalidParameter, match="the prompt has 5001 tokens; this model's"):
        fits.refuse_past_context(entity)  # exactly, now


def _hf_directory(root: Path, **pipeline: Any) -> Path:
    """A tokenizer.json trained here, with `pipeline`'s model and normalizer/pre-tokenizer."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import trainers

    raw = RawTokenizer(pipeline["model"])
    if "normalizer" in pipeline:
        raw.normalizer = pipeline["normalizer"]
    if "pre_tokenizer" in pipeline:
        raw.pre_tokenizer = pipeline["pre_tokenizer"]
    specials = ["<unk>", "<s>", "</s>", *pipeline.get("extra_specials", [])]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, **pipeline.get("trainer", {})
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "hello there general kenobi"] * 20
    raw.train_from_iterator(corpus, trainer=trainer)
    root.mkdir()
    raw.save(str(root / "tokenizer.json"))
    (root / "config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1}))
    return root


def test_hf_bounds_exist_only_for_pipelines_that_keep_every_character(tmp_path: Path) -> None:
    from tokenizers import models, normalizers, pre_tokenizers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    mixtral_like = _hf_directory(
        tmp_path / "mixtral",
        model=models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
        normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
        extra_specials=byte_tokens,
    )
    byte_level = _hf_directory(
        tmp_path / "bytelevel",
        model=models.BPE(),
        pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False),
        trainer={"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()},
    )
    drops_spaces = _hf_directory(
        tmp_path / "whitespace",
        model=models.BPE(unk_token="<unk>"),
        pre_tokenizer=pre_tokenizers.Whitespace(),
    )
    fuses_unknowns = _hf_directory(
        tmp_path / "fused", model=models.BPE(unk_token="<unk>", fuse_unk=True)
    )
    strips_accents = _hf_directory(
        tmp_path / "accents",
        model=models.BPE(unk_token="<unk>"),
        normalizer=normalizers.StripAccents(),
    )
    rng = random.Random(3)
    texts = [
        "the quick brown fox",
        "hello      there " * 40,
        "".join(rng.choices(string.printable, k=3000)),
        "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(500)),  # unseen: bytes
        "kenobi" * 300,
        "😀 é e\u0301",
    ]
    for directory in (mixtral_like, byte_level):
        tokenizer = load_tokenizer(str(directory))
        most = max_chars_per_token(str(directory), tokenizer)
        assert most is not None and most >= 1, directory
        for text in texts:
            least = -(-len(text) // most)
            assert least <= len(tokenizer.encode(text)), (directory.name, text[:20])
            chat = [{"role": "user", "content": text}]
            assert least <= len(tokenizer.apply_chat_template(chat))
    for directory in (drops_spaces, fuses_unknowns, strips_accents):
        assert max_chars_per_token(str(directory), load_tokenizer(str(directory))) is None


# -- the limiter's check --------------------------------------------------------------------
def test_check_refuses_exactly_what_reserve_would_and_records_nothing(
    new_limiter: Factory,
) -> None:
    calls = LimitRule(bucket="e:endpoint", key="endpoint", calls=1)
    tokens = LimitRule(bucket="e:principal:1", key="user", tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        for _ in range(3):
            await limiter.check([calls, tokens], 100)  # nothing recorded: passes again
        await limiter.reserve("a", [tokens], 60)
        with pytest.raises(RateLimited) as refused:
            await limiter.check([tokens], 41)
        assert refused.value.rule == tokens and 59 <= refused.value.retry_after_s <= 60
        await limiter.check([tokens], 40)
        await limiter.reserve("b", [tokens], 40)  # the check left room for exactly this
        await limiter.reserve("c", [calls], 0)
        with pytest.raises(RateLimited) as refused:
            await limiter.check([calls, tokens], 0)
        assert refused.value.rule in (calls, tokens)

    run(scenario, new_limiter)


def test_in_process_check_sees_the_window_slide() -> None:
    now = [0.0]
    limiter = InProcessRateLimiter(clock=lambda: now[0])
    rule = LimitRule(bucket="e:endpoint", key="endpoint", tokens=10, window_s=60)

    async def scenario() -> None:
        await limiter.reserve("a", [rule], 10)
        with pytest.raises(RateLimited):
            await limiter.check([rule], 1)
        now[0] = 60.0
        await limiter.check([rule], 10)

    asyncio.run(scenario())


# -- the body limit is a setting -------------------------------------------------------------
def test_the_body_limit_is_a_setting_and_the_read_stops_at_it() -> None:
    from starlette.requests import Request

    from control_plane.query.routes import BodyTooLarge, _body
    from control_plane.settings import GatewaySettings, Settings

    assert GatewaySettings().max_body_bytes == 4 * 1024 * 1024
    limit = Settings(gateway={"max_body_bytes": 2048}).gateway.max_body_bytes  # type: ignore[arg-type]
    assert limit == 2048

    def request(chunks: list[bytes], content_length: int | None) -> tuple[Request, list[int]]:
        received: list[int] = []

        async def receive() -> dict[str, Any]:
            chunk = chunks[len(received)]
            received.append(len(chunk))
            return {"type": "http.request", "body": chunk, "more_body": len(received) < len(chunks)}

        headers = (
            [] if content_length is None else [(b"content-length", str(content_length).encode())]
        )
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        return Request(scope, receive), received

    async def scenario() -> None:
        whole, _ = request([b"a" * 1024, b"b" * 1024], 2048)
        assert await _body(whole, limit) == b"a" * 1024 + b"b" * 1024
        declared, read = request([b"a" * 4096], 4096)
        with pytest.raises(BodyTooLarge):
            await _body(declared, limit)
        assert read == []  # refused from the header: nothing read
        chunked, read = request([b"a" * 1024] * 10, None)
        with pytest.raises(BodyTooLarge):
            await _body(chunked, limit)
        assert len(read) == 3  # stopped once past the limit

    asyncio.run(scenario())


# -- authenticating before the body --------------------------------------------------------
class CountingCallers(QueryTargets):
    """`QueryTargets` whose database reads are counted (and held until `release` is set)."""

    def __init__(self) -> None:
        super().__init__(sessions=None, ttl_s=60)  # type: ignore[arg-type]
        self.authentications = 0
        self.resolutions = 0
        self.release = threading.Event()

    def _authenticate(self, authorization: str | None) -> Caller:
        self.authentications += 1
        self.release.wait(5)
        if authorization != "Bearer t":
            raise Unauthenticated("invalid, expired or revoked access token")
        return make_caller()

    def _load(self, authorization: str | None, name: str) -> QueryTarget:
        self.resolutions += 1
        return query_target(None)


def test_callers_are_authenticated_once_cached_and_forgotten_with_tokens() -> None:
    async def scenario() -> None:
        targets = CountingCallers()
        waiting = [asyncio.create_task(targets.caller("Bearer t")) for _ in range(20)]
        await asyncio.sleep(0.05)
        targets.release.set()
        callers = await asyncio.gather(*waiting)
        assert targets.authentications == 1 and all(c is callers[0] for c in callers)
        assert await targets.caller("Bearer t") is callers[0]  # cached
        for _ in range(2):  # failures are never cached
            with pytest.raises(Unauthenticated):
                await targets.caller("Bearer revoked")
        assert targets.authentications == 3
        targets.forget()  # e.g. a token was revoked in this process
        await targets.caller("Bearer t")
        assert targets.authentications == 4
        # A resolution caches its caller too: the next query's body needs no extra read.
        await targets.resolve("Bearer other", "chat")
        await targets.caller("Bearer other")
        assert (targets.resolutions, targets.authentications) == (1, 4)

    asyncio.run(scenario())
