"""What a query may ask: OpenAI's chat completions, completions and embeddings bodies plus
Databricks' extras (`client_request_id`, `usage_context`), validated once, at the edge.

Strict on purpose, as OpenAI itself is: a value of the wrong type is refused, never coerced
("5" is not 5, "yes" is not true); an unknown parameter is refused; and a parameter OpenAI
defines that moeserve does not implement (penalties, the deprecated `functions`, ...) is
refused with a 400 that names it, unless it carries its no-op default (presence_penalty 0,
echo false), which is exactly what moeserve does. OpenAI's ranges are enforced.

Every field is the caller's input, and parts of it are stored (`client_request_id`,
`usage_context`) or handed to other processes. So every string anywhere in a body — values,
object keys, nested or not — is refused when it holds a character no database or UTF-8
encoder takes: NUL (U+0000; PostgreSQL text cannot hold it) or a lone surrogate (U+D800 to
U+DFFF unpaired; `json.loads` accepts `"\\ud800"`, no UTF-8 encoder does). The stored
extras have length limits (`MAX_CLIENT_REQUEST_ID`, `MAX_USAGE_CONTEXT_*`). A refusal is a 400
naming the field and what to change; it never repeats the value.

`PromptIds` is a parsed body's prompt as token ids, per candidate entity, tokenized on first
use: entities of one endpoint may use different tokenizers (DBRX's cl100k, Mixtral's
SentencePiece), so the ids belong to an entity; a fallback entity's prompt is tokenized only
if the first candidate fails, and entities sharing a tokenizer share one tokenization. Token
ids a caller sends itself (embeddings) must be in the entity's vocabulary: a 400 naming the
first that is not, before it reaches a replica.
`Tokenizers` keeps each tokenizer a process has loaded, by name.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from control_plane.endpoints.config import ServedEntity, Task
from control_plane.errors import InvalidParameter
from control_plane.query.tool_calling import (
    MAX_TOOLS,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolUse,
    tool_use,
)
from workers.engine.constraint import Constraint
from workers.engine.request import GenerationRequest
from workers.model.args import ModelArgs
from workers.model.source import ModelSource
from workers.tokenizer import Cl100kTokenizer, HFTokenizer, Tokenizer, load_tokenizer

JsonObject = dict[str, JsonValue]  # a request body as JSON decoded it
NoOps = dict[str, tuple[tuple[JsonValue, ...], str]]  # parameter -> (no-op values, why)
MAX_STOPS = 4
MAX_STOP_LENGTH = 256  # characters per stop sequence
MAX_CHOICES = 16
# The caller's extras kept in usage rows (docs/api.md lists these limits).
MAX_CLIENT_REQUEST_ID = 256  # characters; the usage row's column width
MAX_USAGE_CONTEXT_KEYS = 10
MAX_USAGE_CONTEXT_KEY = 64  # characters
MAX_USAGE_CONTEXT_VALUE = 256  # characters
Text = Annotated[str, Field(max_length=1_000_000)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
ContextKey = Annotated[str, Field(min_length=1, max_length=MAX_USAGE_CONTEXT_KEY)]
ContextValue = Annotated[str, Field(max_length=MAX_USAGE_CONTEXT_VALUE)]


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

_FUNCTIONS = "the deprecated functions/function_call are not supported: send tools and tool_choice"
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
        "functions": ((None, []), _FUNCTIONS),
        "function_call": ((None, "none"), _FUNCTIONS),
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


# -- text every body may carry: storable, encodable ------------------------------------------
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_NUL = "holds a NUL character (\\u0000): remove it"
_SURROGATE = (
    "holds a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode "
    "(a surrogate pair, or the character itself)"
)
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")  # a location part safe to repeat
Location = tuple[str | int, ...]


def _text_problem(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return _NUL if found.group() == "\x00" else _SURROGATE


def _all_text_storable(value: object) -> bool:
    """Whether no string of a decoded JSON value (object keys included) holds NUL or a lone
    surrogate: the fast pass every body takes, keeping no locations."""
    search = _UNSTORABLE.search
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if search(item):
                return False
        elif isinstance(item, dict):
            for key in item:
                if isinstance(key, str) and search(key):
                    return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def unstorable_text(value: object) -> tuple[Location, str] | None:
    """Where the first string of a decoded JSON value (object keys included) holds NUL or a
    lone surrogate, and what is wrong with it; None when every string is clean. Iterative:
    any nesting `json.loads` accepts is walked."""
    if _all_text_storable(value):
        return None
    stack: list[tuple[Location, object]] = [((), value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem is not None:
                return where, problem
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if isinstance(key, str) and (problem := _text_problem(key)) is not None:
                    return where, f"has a key that {problem}"
                children.append(((*where, key), child))
            stack.extend(reversed(children))  # depth first, in document order
        elif isinstance(item, list | tuple):
            stack.extend(reversed([((*where, i), child) for i, child in enumerate(item)]))
    return None


def shown_location(where: Location) -> str:
    """A field's location as a 400 may name it: parts a caller chose (object keys, unknown
    parameter names) are repeated only when short and plain, never raw."""
    parts = [
        str(part) if isinstance(part, int) or _SHOWN_NAME.fullmatch(part) else "<key>"
        for part in where
    ]
    return ".".join(parts)


class _Body(BaseModel):
    """What every query body shares: the endpoint (OpenAI routes), the Databricks extras
    kept in usage rows, and the check that every string in the body is storable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str | None = Field(
        default=None, max_length=255, description="the endpoint (OpenAI-style routes)"
    )
    client_request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CLIENT_REQUEST_ID,
        description=f"your id for the request (1-{MAX_CLIENT_REQUEST_ID} characters), kept "
        "in usage rows",
    )
    usage_context: dict[ContextKey, ContextValue] | None = Field(
        default=None,
        max_length=MAX_USAGE_CONTEXT_KEYS,
        description=f"your string tags, kept in usage rows: at most {MAX_USAGE_CONTEXT_KEYS} "
        f"keys of 1-{MAX_USAGE_CONTEXT_KEY} characters, values of at most "
        f"{MAX_USAGE_CONTEXT_VALUE}",
    )
    # accepted at their no-op values only (see UNSUPPORTED)
    user: None = None
    logit_bias: dict[str, float] | None = None
    extra_params: JsonObject | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        """Every string of the body, wherever it is (the nested models are validated as
        parts of this one, so they are covered too)."""
        found = unstorable_text(data)
        if found is not None:
            where, problem = found
            raise PydanticCustomError(
                "unstorable_text",
                "{field} {problem}",
                {"field": shown_location(where) or "the body", "problem": problem},
            )
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    include_usage: bool = Field(default=False, description="a last chunk carries usage")


class _Generation(_Body):
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate at most")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="Databricks extension; 0 keeps every token")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="independent choices")
    stop: StopText | list[StopText] | None = Field(
        default=None,
        description=f"at most {MAX_STOPS} stop sequences of 1-{MAX_STOP_LENGTH} characters",
    )
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="a 64-bit int")
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

    def constraint(self) -> Constraint | None:
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
            constraint=self.constraint(),
        )


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(
        default=None, max_length=MAX_TOOLS, description="an assistant turn's calls"
    )
    tool_call_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="a tool turn's call"
    )

    @model_validator(mode="after")
    def _coherent(self) -> Message:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a message of role 'tool' needs the tool_call_id it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only a message of role 'tool' has a tool_call_id")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only a message of role 'assistant' has tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required (an assistant turn may instead have tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates take it (transformers' convention: a call's
        arguments as an object when they are JSON, as OpenAI sent them otherwise)."""
        turn: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        return turn


def _arguments(text: str) -> JsonValue:
    try:
        return json.loads(text)
    except ValueError:
        return text


class ChatRequest(_Generation):
    _tool_use: ToolUse | None = PrivateAttr(default=None)
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="tokens to generate at most (with max_tokens: the smaller)"
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, description=f"at most {MAX_TOOLS} functions")
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # accepted at their no-op values only (see UNSUPPORTED)
    functions: list[JsonObject] | None = None
    function_call: str | None = None
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

    def tool_use(self) -> ToolUse:
        """The structured-output and tool settings, resolved and compiled once (a 400
        that says what to change when they cannot be)."""
        use = self._tool_use
        if use is None:
            use = tool_use(
                self.tools, self.tool_choice, self.parallel_tool_calls, self.response_format
            )
            if use.calls_tools and self.logprobs:
                raise InvalidParameter("logprobs are not supported with tools: leave one out")
            self._tool_use = use
        return use

    def constraint(self) -> Constraint | None:
        return self.tool_use().constraint

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
        body = REQUEST_MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        raise InvalidParameter(f"invalid {kind} request: {_problems(exc)}") from None
    if isinstance(body, ChatRequest):
        body.tool_use()  # resolved and compiled here, at the edge: a 400 before dispatch
    return body


def _problems(exc: ValidationError) -> str:
    """The errors as a 400 message: each names its field (caller-chosen names only when
    plain, see `shown_location`) and never carries the value that was refused."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        if loc[-1:] == ("[key]",):  # (..., the key itself, "[key]"): a key was refused
            where = f"{shown_location(loc[:-2])} key"
        else:
            where = shown_location(loc) or "body"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {where!r}")
        elif error["type"] == "unstorable_text":
            problems.append(error["msg"])  # it names the field itself
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
    """A body's prompt as token ids, per tokenizer, tokenized on first use.

    A prompt of more than `INLINE_TOKENIZE_MAX_CHARS` characters of text is `large`: it is
    tokenized in a worker thread (`tokenized`), so the event loop keeps answering other
    queries meanwhile, and before that it can be judged from its length alone
    (`least_tokens`, `refuse_past_context`). A smaller one is tokenized inline: that costs
    less than the hop to a thread."""

    def __init__(
        self, body: QueryRequest, tokenizers: Tokenizers, body_bytes: int | None = None
    ) -> None:
        self._body = body
        self._tokenizers = tokenizers
        self._by_tokenizer: dict[int, list[list[int]]] = {}
        # A JSON body of n bytes holds at most n characters of text: a small one is not
        # even counted.
        small_body = body_bytes is not None and body_bytes <= INLINE_TOKENIZE_MAX_CHARS
        self.large = not small_body and _text_chars(body) > INLINE_TOKENIZE_MAX_CHARS
        # The caller's own token ids (embeddings' token-id inputs), and their range.
        given = body.items() if isinstance(body, EmbeddingsRequest) else []
        self._given_ids = [item for item in given if isinstance(item, list)]
        self._given_range = (
            (min(map(min, self._given_ids)), max(map(max, self._given_ids)))
            if self._given_ids
            else None
        )

    def of(self, entity: ServedEntity) -> list[list[int]]:
        """The body's token ids under `entity`'s tokenizer (one list; embeddings: one per
        input), tokenized here if they were not yet."""
        self.refuse_outside_vocabulary(entity)
        tokenizer = self._tokenizers.of(entity)
        key = id(tokenizer)  # the process keeps each tokenizer for its lifetime
        if key not in self._by_tokenizer:
            self._by_tokenizer[key] = _tokenize(tokenizer, self._body)
        return self._by_tokenizer[key]

    async def tokenized(self, entity: ServedEntity) -> list[list[int]]:
        """`of(entity)`; a large prompt is tokenized in a worker thread."""
        if not self.large:
            return self.of(entity)
        self.refuse_outside_vocabulary(entity)
        tokenizer = self._tokenizers.of(entity)
        ids = self._by_tokenizer.get(id(tokenizer))
        if ids is None:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(
                _tokenizing_threads(), _tokenize, tokenizer, self._body
            )
            ids = self._by_tokenizer.setdefault(id(tokenizer), ids)
        return ids

    def least_tokens(self, entity: ServedEntity) -> list[int]:
        """Per item (each input of an embeddings body, else the one prompt), at least how
        many tokens it has under `entity`'s tokenizer: from the text's length while it is
        not tokenized (0 when the tokenizer gives no sound bound), exactly afterwards."""
        tokenizer = self._tokenizers.of(entity)
        ids = self._by_tokenizer.get(id(tokenizer))
        if ids is not None:
            return [len(item) for item in ids]
        most = max_chars_per_token(entity.model_source.tokenizer_name(), tokenizer)
        if isinstance(self._body, EmbeddingsRequest):
            return [
                len(item) if isinstance(item, list) else _least(len(item), most)
                for item in self._body.items()
            ]
        return [_least(_text_chars(self._body), most)]

    def refuse_outside_vocabulary(self, entity: ServedEntity) -> None:
        """A 400 naming the first of the caller's own token ids (embeddings' token-id
        inputs) that `entity`'s model has no embedding for, and the valid range: ids
        outside [0, vocab_size) used to fail in the replica, as a 503. Tokenizers only make
        ids of their model's vocabulary; when the model's config cannot be read here, the
        replica is left to refuse them."""
        if self._given_range is None:
            return
        vocab_size = vocab_size_of(entity)
        low, high = self._given_range
        if vocab_size is None or (low >= 0 and high < vocab_size):
            return
        for index, ids in enumerate(self._given_ids):
            for position, token_id in enumerate(ids):
                if not 0 <= token_id < vocab_size:
                    raise InvalidParameter(
                        f"input {index} holds token id {token_id} (position {position}), "
                        f"which is not in this model's vocabulary: token ids go from 0 to "
                        f"{vocab_size - 1}"
                    )

    def refuse_past_context(self, entity: ServedEntity) -> None:
        """A 400 when the prompt cannot fit `entity`'s context, as the engine would refuse
        it: judged from its length alone until it is tokenized, exactly afterwards."""
        context = context_of(entity)
        if context is None:
            return
        counts = self.least_tokens(entity)
        exact = id(self._tokenizers.of(entity)) in self._by_tokenizer
        has = "has" if exact else "has at least"
        if isinstance(self._body, EmbeddingsRequest):
            for index, count in enumerate(counts):
                if count > context:
                    raise InvalidParameter(
                        f"input {index} {has} {count} tokens; this model's context is "
                        f"{context} tokens, so shorten or split that input"
                    )
        elif counts[0] >= context:
            raise InvalidParameter(
                f"the prompt {has} {counts[0]} tokens; this model's context is {context} "
                "tokens, so shorten the prompt"
            )


def _tokenize(tokenizer: Tokenizer, body: QueryRequest) -> list[list[int]]:
    from workers.chat_template import ChatTemplateError

    try:
        if isinstance(body, ChatRequest):
            messages = [m.for_template() for m in body.messages]
            tools = body.tool_use().prompt_tools()
            return [tokenizer.apply_chat_template(messages, tools=tools)]
        if isinstance(body, CompletionRequest):
            return [tokenizer.encode(body.text())]
        return [tokenizer.encode(i) if isinstance(i, str) else i for i in body.items()]
    except ChatTemplateError as exc:  # the model's own jinja template raised or crossed a bound
        raise InvalidParameter(
            f"the prompt cannot be tokenized: the model's chat template failed: {exc}"
        ) from None
    except ValueError as exc:  # e.g. a built-in chat format's rule on the order of roles
        raise InvalidParameter(f"the prompt cannot be tokenized: {exc}") from None


# -- judging a prompt before tokenizing it ----------------------------------------------------
# Prompts up to this many characters are tokenized inline: about 1 ms at most (cl100k), and
# a trip through a worker thread would add 25-150 µs to every one of them. Longer ones go to
# a thread, where their cost grows without stalling other queries.
INLINE_TOKENIZE_MAX_CHARS = 8192
# cl100k's longest token is 128 bytes (a run of spaces). Every token is a byte string of the
# UTF-8 text and every character at least one byte, so n characters are at least n / 128
# tokens. (Tokens are at most as many as bytes: no bound the other way is cheap.)
CL100K_MAX_TOKEN_BYTES = 128


def texts_of(body: QueryRequest) -> list[str]:
    """The caller's text the model sees, in order: each message's content, the prompt, or
    each text input."""
    if isinstance(body, ChatRequest):
        return [m.text() for m in body.messages]
    if isinstance(body, CompletionRequest):
        return [body.text()]
    return [item for item in body.items() if isinstance(item, str)]


def _text_chars(body: QueryRequest) -> int:
    """How many characters of text the body gives the tokenizer."""
    return sum(map(len, texts_of(body)))


def _least(chars: int, most_per_token: int | None) -> int:
    return 0 if most_per_token is None else -(-chars // most_per_token)


@functools.cache
def _tokenizing_threads() -> ThreadPoolExecutor:
    """Where large prompts are tokenized: half the cores (at least one thread), so that
    tokenizing never takes every core from the event loop, and never the default
    executor's threads (the query path's database reads)."""
    return ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), "tokenize")


def context_of(entity: ServedEntity) -> int | None:
    """The context (tokens) of `entity`'s model, as its replicas' engines have it; None when
    its config cannot be read here (the engine still checks)."""
    args = _model_args(entity.model_source)
    return None if args is None else args.max_seq_len


def vocab_size_of(entity: ServedEntity) -> int | None:
    """How many token ids `entity`'s model embeds (valid ids: 0 to this - 1); None when its
    config cannot be read here."""
    args = _model_args(entity.model_source)
    return None if args is None else args.vocab_size


@functools.lru_cache(maxsize=256)
def _model_args(source: ModelSource) -> ModelArgs | None:
    try:
        return source.args()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def max_chars_per_token(name: str, tokenizer: Tokenizer) -> int | None:
    """The most characters of a prompt one token of `tokenizer` (loaded from `name`) can
    stand for, or None when no sound bound is known: a prompt of n characters then has at
    least n / that many tokens (its chat template only adds tokens)."""
    if isinstance(tokenizer, Cl100kTokenizer):
        return CL100K_MAX_TOKEN_BYTES
    if isinstance(tokenizer, HFTokenizer):
        return _hf_max_chars_per_token(name)
    return None


@functools.lru_cache(maxsize=64)
def _hf_max_chars_per_token(directory: str) -> int | None:
    """For a Hugging Face tokenizer.json: a BPE model whose normalizer and pre-tokenizer
    never drop or merge characters (so the text the model splits is at least as long as
    the prompt) and which has a token for every character (a byte-fallback token, an
    unfused unknown token, or the whole byte-level alphabet), so that every token is one
    of its vocabulary's strings standing for at most that many characters. Mixtral's,
    Llama's and GPT-2-style byte-level tokenizers are such; anything else gets None."""
    try:
        spec = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return None
    vocab = model.get("vocab")
    if (
        not isinstance(vocab, dict)
        or not vocab
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or not _keeps_characters(spec.get("normalizer"), _normalizer_keeps)
        or not _keeps_characters(spec.get("pre_tokenizer"), _pre_tokenizer_keeps)
        or not _every_character_has_a_token(model, vocab, spec.get("pre_tokenizer"))
    ):
        return None
    added = [t.get("content") for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    return max(1, *map(len, vocab), *(len(t) for t in added if isinstance(t, str)))


def _keeps_characters(step: Any, keeps: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether a normalizer or pre-tokenizer (none, one, or a sequence) keeps every
    character, each as at least one character."""
    if step is None:
        return True
    if not isinstance(step, dict):
        return False
    if step.get("type") == "Sequence":
        parts = step.get("normalizers", step.get("pretokenizers"))
        return isinstance(parts, list) and all(_keeps_characters(p, keeps) for p in parts)
    return keeps(step)


def _normalizer_keeps(step: dict[str, Any]) -> bool:
    if step.get("type") == "Replace":  # a plain string by one at least as long
        pattern, content = step.get("pattern"), step.get("content")
        old = pattern.get("String") if isinstance(pattern, dict) else None
        return isinstance(old, str) and isinstance(content, str) and len(content) >= len(old)
    # Decomposition and lower-casing map each character to one or more.
    return step.get("type") in ("Prepend", "NFD", "NFKD", "Lowercase")


def _pre_tokenizer_keeps(step: dict[str, Any]) -> bool:
    if step.get("type") in ("Split", "Punctuation"):
        return step.get("behavior") != "Removed"
    return step.get("type") in ("ByteLevel", "Metaspace", "Digits")


def _every_character_has_a_token(model: dict[str, Any], vocab: dict[str, Any], pre: Any) -> bool:
    if model.get("byte_fallback") and all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return True
    unknown = model.get("unk_token")
    if isinstance(unknown, str) and unknown in vocab and not model.get("fuse_unk"):
        return True  # one unknown token per unknown character
    if _is_byte_level(pre):
        from tokenizers.pre_tokenizers import ByteLevel

        return all(char in vocab for char in ByteLevel.alphabet())
    return False


def _is_byte_level(pre: Any) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers")
        return isinstance(parts, list) and any(_is_byte_level(p) for p in parts)
    return pre.get("type") == "ByteLevel"
