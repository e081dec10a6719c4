"""What a query may ask: OpenAI's chat completions, completions and embeddings bodies plus
Databricks' extras (`client_request_id`, `usage_context`), validated once, at the edge.

Strict on purpose, as OpenAI itself is: a value of the wrong type is refused, never coerced
("5" is not 5, "yes" is not true); an unknown parameter is refused; and a parameter OpenAI
defines that moeserve does not implement (tools, structured output, penalties, ...) is
refused with a 400 that names it, unless it carries its no-op default (presence_penalty 0,
echo false), which is exactly what moeserve does. OpenAI's ranges are enforced.

`PromptIds` is a parsed body's prompt as token ids, per candidate entity, tokenized on first
use: entities of one endpoint may use different tokenizers (DBRX's cl100k, Mixtral's
SentencePiece), so the ids belong to an entity; a fallback entity's prompt is tokenized only
if the first candidate fails, and entities sharing a tokenizer share one tokenization.
`Tokenizers` keeps each tokenizer a process has loaded, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from control_plane.endpoints.config import ServedEntity, Task
from control_plane.errors import InvalidParameter
from workers.engine.request import GenerationRequest
from workers.tokenizer import Tokenizer, load_tokenizer

JsonObject = dict[str, JsonValue]  # a request body as JSON decoded it
NoOps = dict[str, tuple[tuple[JsonValue, ...], str]]  # parameter -> (no-op values, why)
MAX_STOPS = 4
MAX_CHOICES = 16
Text = Annotated[str, Field(max_length=1_000_000)]


class QueryKind(StrEnum):
    """What a request asks for, named after its OpenAI route."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

    @property
    def task(self) -> Task:
        return _TASKS[self]


_TASKS = {
    QueryKind.CHAT: Task.CHAT,
    QueryKind.COMPLETIONS: Task.COMPLETIONS,
    QueryKind.EMBEDDINGS: Task.EMBEDDINGS,
}
KIND_OF_TASK = {task: kind for kind, task in _TASKS.items()}
# The field that makes a body of each kind: a native body with another kind's field is
# meant for another kind of endpoint.
KIND_FIELD = {
    QueryKind.CHAT: "messages",
    QueryKind.COMPLETIONS: "prompt",
    QueryKind.EMBEDDINGS: "input",
}

_TOOLS = "tool calling is not supported yet"
_FORMAT = "structured output (response_format) is not supported yet"
# OpenAI parameters moeserve does not implement: {name: (no-op values, why)}, per kind.
_COMMON_UNSUPPORTED: NoOps = {
    "user": ((None,), "end-user ids are not recorded; tag usage rows with usage_context"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "extra_params": ((None, {}), "extra_params are not supported"),
}
_GENERATION_UNSUPPORTED: NoOps = {
    "presence_penalty": ((None, 0), "presence_penalty is not supported: send 0 or leave it out"),
    "frequency_penalty": ((None, 0), "frequency_penalty is not supported: send 0 or leave it out"),
}
UNSUPPORTED: dict[QueryKind, NoOps] = {
    QueryKind.CHAT: {
        **_COMMON_UNSUPPORTED,
        **_GENERATION_UNSUPPORTED,
        "tools": ((None, []), _TOOLS),
        "tool_choice": ((None, "none"), _TOOLS),
        "parallel_tool_calls": ((None,), _TOOLS),
        "functions": ((None, []), _TOOLS),
        "function_call": ((None, "none"), _TOOLS),
        "response_format": ((None, {"type": "text"}), _FORMAT),
        "modalities": ((None, ["text"]), "only text output is supported"),
        "audio": ((None,), "audio output is not supported"),
        "prediction": ((None,), "predicted outputs are not supported"),
        "reasoning_effort": ((None,), "reasoning_effort is not supported"),
        "service_tier": ((None, "auto", "default"), "service tiers are not supported"),
        "store": ((None, False), "stored completions are not supported"),
        "metadata": ((None, {}), "metadata is not supported"),
        "web_search_options": ((None,), "web search is not supported"),
    },
    QueryKind.COMPLETIONS: {
        **_COMMON_UNSUPPORTED,
        **_GENERATION_UNSUPPORTED,
        "best_of": ((None, 1), "best_of is not supported: send n choices instead"),
        "echo": ((None, False), "echo is not supported"),
        "suffix": ((None,), "suffix (insertion) is not supported"),
    },
    QueryKind.EMBEDDINGS: {
        **_COMMON_UNSUPPORTED,
        "dimensions": ((None,), "dimensions is not supported: vectors have the model's width"),
    },
}


def _refuse_unsupported(kind: QueryKind, raw: JsonObject) -> None:
    for name, (no_ops, why) in UNSUPPORTED[kind].items():
        value = raw.get(name)
        if name.endswith("_penalty") and isinstance(value, int | float) and not -2 <= value <= 2:
            raise InvalidParameter(f"{name} must be between -2 and 2; got {value}")
        if not _no_op(value, no_ops):
            raise InvalidParameter(f"{name}: {why}")


def _no_op(value: JsonValue, no_ops: tuple[JsonValue, ...]) -> bool:
    """None, or equal to a no-op value (booleans equal only booleans: true is not 1)."""
    return value is None or any(
        value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in no_ops
    )


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str | None = Field(
        default=None, max_length=255, description="the endpoint (OpenAI-style routes)"
    )
    client_request_id: str | None = Field(
        default=None, max_length=256, description="your id for the request, kept in usage rows"
    )
    usage_context: dict[str, str] | None = Field(
        default=None, description="your key/value tags, kept in usage rows"
    )
    # accepted at their no-op values only (see UNSUPPORTED)
    user: None = None
    logit_bias: dict[str, float] | None = None
    extra_params: JsonObject | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    include_usage: bool = Field(default=False, description="a last chunk carries usage")


class _Generation(_Body):
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate at most")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="Databricks extension; 0 keeps every token")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="independent choices")
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = (
        Field(default=None, description=f"at most {MAX_STOPS} stop sequences")
    )
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @model_validator(mode="after")
    def _coherent(self) -> _Generation:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop: at most {MAX_STOPS} stop sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return None

    def generation_request(self, request_id: str, prompt_ids: list[int]) -> GenerationRequest:
        """The engine request (validated here, once; the replica trusts it)."""
        return GenerationRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            max_tokens=self.token_limit(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stops(),
            n=self.n,
            logprobs=self.num_logprobs(),
        )


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="tokens to generate at most (with max_tokens: the smaller)"
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # accepted at their no-op values only (see UNSUPPORTED)
    tools: list[JsonObject] | None = None
    tool_choice: str | None = None
    parallel_tool_calls: None = None
    functions: list[JsonObject] | None = None
    function_call: str | None = None
    response_format: dict[str, str] | None = None
    modalities: list[str] | None = None
    audio: None = None
    prediction: None = None
    reasoning_effort: None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    web_search_options: None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def token_limit(self) -> int | None:
        limits = [n for n in (self.max_tokens, self.max_completion_tokens) if n is not None]
        return min(limits, default=None)

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generation):
    prompt: Text | list[Text] = Field(description="one prompt: a string or a list of one")
    logprobs: int | None = Field(default=None, ge=0, le=5)
    # accepted at their no-op values only (see UNSUPPORTED)
    best_of: int | None = None
    echo: bool | None = None
    suffix: None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        if not self.text():
            raise ValueError("the prompt is empty")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def num_logprobs(self) -> int | None:
        return self.logprobs


class EmbeddingsRequest(_Body):
    input: Text | list[Text] | list[int] | list[list[int]] = Field(
        description="texts or token-id lists, one vector each"
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="base64: little-endian float32 bytes (the openai client's default)",
    )
    dimensions: None = None

    @model_validator(mode="after")
    def _non_empty(self) -> EmbeddingsRequest:
        items = [self.input] if isinstance(self.input, str) else self.input
        if not items or any(isinstance(i, str | list) and not i for i in items):
            raise ValueError("input must hold at least one non-empty text or token list")
        if len(items) > 2048:
            raise ValueError("input: at most 2048 items per request")
        return self

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


QueryRequest = ChatRequest | CompletionRequest | EmbeddingsRequest
GenerationBody = ChatRequest | CompletionRequest
REQUEST_MODELS: dict[QueryKind, type[QueryRequest]] = {
    QueryKind.CHAT: ChatRequest,
    QueryKind.COMPLETIONS: CompletionRequest,
    QueryKind.EMBEDDINGS: EmbeddingsRequest,
}


def parse_request(kind: QueryKind, raw: JsonObject) -> QueryRequest:
    """`raw` (a JSON object) as a request of `kind`, or a 400 that names what to change."""
    _refuse_unsupported(kind, raw)
    try:
        return REQUEST_MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        raise InvalidParameter(f"invalid {kind} request: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {where!r}")
        else:
            problems.append(f"{where}: {error['msg']}")
    return "; ".join(dict.fromkeys(problems))


# -- the prompt as token ids ------------------------------------------------------------------
TextOf = Callable[[int], str]  # token id -> its text


class Tokenizers:
    def __init__(self, load: Callable[[str], Tokenizer] = load_tokenizer) -> None:
        self._load = load
        self._by_name: dict[str, Tokenizer] = {}

    def of(self, entity: ServedEntity) -> Tokenizer:
        name = entity.model_source.tokenizer_name()
        tokenizer = self._by_name.get(name)
        if tokenizer is None:
            tokenizer = self._by_name[name] = self._load(name)
        return tokenizer

    def token_text(self, entity: ServedEntity) -> TextOf:
        """token id -> its text under `entity`'s tokenizer (for logprobs)."""
        tokenizer = self.of(entity)
        return lambda token_id: tokenizer.decode([token_id])


class PromptIds:
    def __init__(self, body: QueryRequest, tokenizers: Tokenizers) -> None:
        self._body = body
        self._tokenizers = tokenizers
        self._by_tokenizer: dict[int, list[list[int]]] = {}

    def of(self, entity: ServedEntity) -> list[list[int]]:
        """The body's token ids under `entity`'s tokenizer (one list; embeddings: one per
        input)."""
        tokenizer = self._tokenizers.of(entity)
        key = id(tokenizer)  # the process keeps each tokenizer for its lifetime
        if key not in self._by_tokenizer:
            self._by_tokenizer[key] = _tokenize(tokenizer, self._body)
        return self._by_tokenizer[key]


def _tokenize(tokenizer: Tokenizer, body: QueryRequest) -> list[list[int]]:
    if isinstance(body, ChatRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return [tokenizer.apply_chat_template(messages)]
    if isinstance(body, CompletionRequest):
        return [tokenizer.encode(body.text())]
    return [tokenizer.encode(i) if isinstance(i, str) else i for i in body.items()]
