"""Request bodies of the query API (OpenAI-compatible, plus Databricks' extras).

A body is validated once, at the edge, into one of `ChatBody`, `CompletionBody` or
`EmbeddingsBody`; a problem becomes a 400 that names the field. Unknown fields are
ignored, as OpenAI-compatible servers do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from control_plane.errors import InvalidParameter

Kind = Literal["chat", "completion", "embeddings"]
MAX_STOPS = 4


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(default=None, description="the endpoint (OpenAI-style routes)")
    client_request_id: str | None = Field(default=None, max_length=256)
    usage_context: dict[str, Any] | None = None


class _Generation(_Common):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stop

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def num_logprobs(self) -> int | None:
        return None

    def generation_request(self, request_id: str, prompt_ids: list[int]) -> dict[str, Any]:
        """The engine request as plain data: the replica validates it into a
        `GenerationRequest` (a dict crosses Ray's serializer far cheaper than a model)."""
        return {
            "request_id": request_id,
            "prompt_token_ids": prompt_ids,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stops(),
            "n": self.n,
            "logprobs": self.num_logprobs(),
        }


class ChatBody(_Generation):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionBody(_Generation):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        if not (prompt if isinstance(prompt, str) else prompt[0]):
            raise ValueError("the prompt is empty")
        return prompt

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def num_logprobs(self) -> int | None:
        return self.logprobs


class EmbeddingsBody(_Common):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="base64: little-endian float32 bytes (the openai client's default)",
    )

    @field_validator("input")
    @classmethod
    def _non_empty(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        items = [value] if isinstance(value, str) else value
        if not items or any(isinstance(i, str | list) and not i for i in items):
            raise ValueError("input must hold at least one non-empty text or token list")
        return value

    @property
    def stream(self) -> bool:
        return False

    def items(self) -> list[str | list[int]]:
        """One entry per vector to return: a text, or token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [[v for v in value if isinstance(v, int)]]
        return [v for v in value if isinstance(v, str | list)]


Body = ChatBody | CompletionBody | EmbeddingsBody
_MODELS: dict[Kind, type[BaseModel]] = {
    "chat": ChatBody,
    "completion": CompletionBody,
    "embeddings": EmbeddingsBody,
}


def kind_of(raw: dict[str, Any]) -> Kind:
    """Which task a native `invocations` body asks for."""
    if "messages" in raw:
        return "chat"
    if "prompt" in raw:
        return "completion"
    if "input" in raw:
        return "embeddings"
    raise InvalidParameter("send `messages` (chat), `prompt` (completions) or `input` (embeddings)")


def parse_body(kind: Kind, raw: dict[str, Any]) -> Body:
    try:
        body = _MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidParameter(f"invalid {kind} request: {problems}") from None
    assert isinstance(body, ChatBody | CompletionBody | EmbeddingsBody)
    return body
