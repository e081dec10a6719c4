"""An endpoint's guardrails on one query (`ai_gateway.guardrails`, Databricks' semantics):
the prompt is screened before it is tokenized, a whole answer's choices before they are
shaped, and a stream's choices as they stream.

- Input: a keyword, or PII under `BLOCK`, refuses the request (400, naming the kinds that
  matched, never the text); PII under `MASK` is replaced (`[EMAIL_ADDRESS]`, ...) in the
  messages, prompt or inputs before the model or any log sees them.
- Output: PII under `MASK` is masked; a keyword or PII under `BLOCK` ends the choice just
  before the blocked span, with `finish_reason: "content_filter"`. A stream holds back the
  last characters of each choice (`StreamGuard`) until it is sure no match covers them, so a
  blocked or unmasked span never reaches the client; a whole answer is screened the same
  way, so both give the same text.
- Logprobs would reveal the held-back or masked tokens: a request for them is refused on an
  endpoint with output guardrails.
- `safety` and `valid_topics` are judged by the installation's guard model
  (`guard_model.py`): the request before it is dispatched, each answer choice as a whole
  (a stream holds each choice until it ends). Without a guard model they are refused when
  set, and a stored config that has them makes every query a 503 until it is changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from control_plane.endpoints.ai_gateway import AiGatewayConfig, GuardrailParameters
from control_plane.errors import ApiError, BadRequest, InvalidParameter
from control_plane.guardrails import Guard, Hit, HitKind, Release, StreamGuard
from control_plane.query.requests import (
    ChatRequest,
    CompletionRequest,
    EmbeddingsRequest,
    QueryRequest,
    texts_of,
)
from workers.engine.request import Completion, TokenChunk


class GuardrailsUnenforceable(ApiError):
    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


@dataclass(frozen=True)
class Screens:
    input: Guard
    output: Guard
    judged_input: GuardrailParameters | None  # what the guard model judges, if anything
    judged_output: GuardrailParameters | None

    @classmethod
    def of(cls, gateway: AiGatewayConfig, *, guard_model: bool) -> Screens:
        guardrails = gateway.guardrails
        why = None if guardrails is None else guardrails.problem(guard_model=guard_model)
        if why is not None:
            raise GuardrailsUnenforceable(
                f"this endpoint's guardrails cannot be enforced: {why}; its owner must "
                "update the endpoint's AI gateway config"
            )
        judged_input = judged_output = None
        if guardrails is not None:
            judged_input = (
                guardrails.input if guardrails.input and guardrails.input.judged else None
            )
            judged_output = (
                guardrails.output if guardrails.output and guardrails.output.judged else None
            )
        return cls(Guard.for_input(gateway), Guard.for_output(gateway), judged_input, judged_output)

    def check_request(self, body: QueryRequest) -> None:
        """What the output guardrails cannot allow alongside them (a 400)."""
        if (self.output.active or self.judged_output) and _asks_logprobs(body):
            raise InvalidParameter(
                "logprobs are not available on this endpoint: its output guardrails hold "
                "back and mask text that logprobs would reveal"
            )


def _asks_logprobs(body: QueryRequest) -> bool:
    if isinstance(body, ChatRequest):
        return body.logprobs
    return isinstance(body, CompletionRequest) and body.logprobs is not None


# -- input ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenedInput:
    body: QueryRequest  # with PII masked where the guardrails mask it
    blocked: bool
    reasons: tuple[HitKind, ...]
    hits: tuple[Hit, ...]

    def refusal(self) -> BadRequest:
        return input_refusal(self.reasons)


def input_refusal(reasons: tuple[HitKind, ...]) -> BadRequest:
    kinds = ", ".join(_REASONS.get(kind, f"PII ({kind.value})") for kind in reasons)
    return BadRequest(f"the request was blocked by this endpoint's input guardrails: {kinds}")


_REASONS = {
    HitKind.INVALID_KEYWORD: "an invalid keyword",
    HitKind.UNSAFE: "unsafe content (safety)",
    HitKind.OFF_TOPIC: "not one of the valid topics",
}


def judged_text(body: QueryRequest) -> str:
    """What the guard model judges of a request: its texts, a chat's turns by role."""
    if isinstance(body, ChatRequest):
        return "\n\n".join(f"{m.role}: {m.text()}" for m in body.messages if m.text())
    return "\n\n".join(texts_of(body))


def screen_input(body: QueryRequest, guard: Guard) -> ScreenedInput:
    """`body` screened: masked where PII is masked, and whether it is blocked (and why)."""
    if not guard.active:
        return ScreenedInput(body, False, (), ())
    texts = texts_of(body)
    verdicts = [guard.check(text) for text in texts]
    hits = tuple(hit for v in verdicts for hit in v.hits)
    blocked = [v for v in verdicts if v.blocked]
    if blocked:
        reasons = tuple(dict.fromkeys(kind for v in blocked for kind in v.reasons))
        return ScreenedInput(body, True, reasons, hits)
    masked = [v.text for v in verdicts]
    if masked != texts:
        body = _with_texts(body, masked)
    reasons = tuple(dict.fromkeys(kind for v in verdicts for kind in v.reasons))
    return ScreenedInput(body, False, reasons, hits)


def _with_texts(body: QueryRequest, texts: list[str]) -> QueryRequest:
    if isinstance(body, ChatRequest):
        messages = [
            m if m.content is None else m.model_copy(update={"content": text})
            for m, text in zip(body.messages, texts, strict=True)
        ]
        return body.model_copy(update={"messages": messages})
    if isinstance(body, CompletionRequest):
        return body.model_copy(update={"prompt": texts[0]})
    assert isinstance(body, EmbeddingsRequest)
    replaced = iter(texts)
    items = [next(replaced) if isinstance(item, str) else item for item in body.items()]
    return body.model_copy(update={"input": items})


# -- output --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenedOutput:
    text: str  # what may be sent
    blocked: bool
    hits: tuple[Hit, ...]


def _joined(first: Release, second: Release) -> ScreenedOutput:
    return ScreenedOutput(
        first.text + second.text, first.blocked or second.blocked, first.hits + second.hits
    )


def screen_text(guard: Guard, text: str) -> ScreenedOutput:
    """A whole choice screened exactly as its stream would be."""
    stream = StreamGuard(guard)
    return _joined(stream.feed(text), stream.finish())


def screen_completion(result: Completion, guard: Guard) -> tuple[Completion, list[Hit], bool]:
    """A whole answer with each choice screened; the hits, and whether a choice was cut."""
    if not guard.active:
        return result, [], False
    texts, reasons = dict(result.texts), dict(result.finish_reasons)
    hits: list[Hit] = []
    cut = False
    for index, text in result.texts.items():
        screened = screen_text(guard, text)
        texts[index] = screened.text
        hits += screened.hits
        if screened.blocked:
            reasons[index] = "content_filter"
            cut = True
    return dataclasses.replace(result, texts=texts, finish_reasons=reasons), hits, cut


Judge = Callable[[str], Awaitable[tuple[Hit, ...]]]  # the guard model on one text


class OutputScreen:
    """A stream's choices, each behind its own `StreamGuard`; with a guard model (`judge`),
    each choice is also held whole until it ends, judged, then sent or withheld."""

    def __init__(self, guard: Guard, choices: int, judge: Judge | None = None) -> None:
        self.guard = guard
        self._judge = judge
        self._streams: dict[int, StreamGuard] = {}
        self._held: dict[int, list[str]] = {}  # judged choices' text until they end
        self._open = set(range(choices))  # choices still sending

    @property
    def done(self) -> bool:
        """Every choice finished or was cut: nothing more will be sent."""
        return not self._open

    def sends(self, index: int) -> bool:
        return index in self._open

    def screen(self, chunk: TokenChunk) -> tuple[TokenChunk, tuple[Hit, ...], bool]:
        """The chunk as it may be sent (its text released so far; ending the choice with
        "content_filter" when a blocked span came), its hits, and whether it cut."""
        if not self.guard.active:
            if chunk.finish_reason is not None:
                self._open.discard(chunk.index)
            return chunk, (), False
        stream = self._streams.setdefault(chunk.index, StreamGuard(self.guard))
        released = stream.feed(chunk.text)
        if chunk.finish_reason is not None and not released.blocked:
            screened = _joined(released, stream.finish())
        else:
            screened = ScreenedOutput(released.text, released.blocked, released.hits)
        reason = "content_filter" if screened.blocked else chunk.finish_reason
        if reason is not None:
            self._open.discard(chunk.index)
        sent = dataclasses.replace(chunk, text=screened.text, finish_reason=reason, logprobs=None)
        return sent, screened.hits, screened.blocked

    async def judged(self, chunk: TokenChunk) -> tuple[TokenChunk, tuple[Hit, ...], bool]:
        """With a guard model: the chunk's text held until its choice ends, then the whole
        choice judged and sent at once, or withheld with "content_filter"."""
        if self._judge is None:
            return chunk, (), False
        held = self._held.setdefault(chunk.index, [])
        held.append(chunk.text)
        if chunk.finish_reason is None:
            return dataclasses.replace(chunk, text=""), (), False
        text = "".join(self._held.pop(chunk.index))
        hits = await self._judge(text) if text else ()
        if hits:
            self._open.discard(chunk.index)
            return dataclasses.replace(chunk, text="", finish_reason="content_filter"), hits, True
        return dataclasses.replace(chunk, text=text), (), False
