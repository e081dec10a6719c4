"""Structured output and tool calling: what a chat body may ask (`response_format`, `tools`,
`tool_choice`, `parallel_tool_calls`), the grammar that makes the model follow it, and the
tool calls read back out of what the model wrote.

How a model calls a tool, in text: one block per call,

    <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>

(the convention of Hermes/Qwen-style chat templates; the built-in ChatML prompt teaches it
too). With `tool_choice` "required" or a named function the output is constrained to such
blocks, each `arguments` valid against its function's `parameters` (a single block when
`parallel_tool_calls` is false or a function is named). With "auto" the model is free:
an answer that is exactly such blocks, naming declared functions, becomes `tool_calls`;
anything else is content. `response_format` constrains content to JSON (`json_object`) or
to a schema (`json_schema`; the schema is enforced whether or not `strict` is set). With
"auto" and a `response_format`, the model may write either tool calls or that JSON.

A schema or a function's parameters that the grammar library cannot compile is a 400 with
the library's reason, before any replica is asked.
"""

from __future__ import annotations

import json
import re
import uuid
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from control_plane.errors import InvalidParameter
from workers.engine.constraint import MAX_SOURCE_CHARS, Constraint, ConstraintKind, problem

JsonObject = dict[str, JsonValue]
MAX_TOOLS = 128
OPEN, CLOSE = "<tool_call>", "</tool_call>"
FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# A function whose `parameters` are left out takes none (OpenAI's rule).
NO_PARAMETERS: JsonObject = {"type": "object", "properties": {}, "additionalProperties": False}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: FunctionName
    description: str | None = Field(default=None, max_length=4096)
    schema_: JsonObject = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class FunctionSpec(_Strict):
    name: FunctionName
    description: str | None = Field(default=None, max_length=8192)
    parameters: JsonObject | None = None
    strict: bool | None = None

    def schema_of_parameters(self) -> JsonObject:
        return NO_PARAMETERS if self.parameters is None else self.parameters


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class FunctionName_(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName_


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# -- calls in messages (what the caller sends back in a conversation) ----------------------
class CalledFunction(_Strict):
    name: FunctionName
    arguments: str = Field(max_length=1_000_000, description="the arguments as JSON text")


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: CalledFunction


# -- what a chat body asked for, resolved -----------------------------------------------------
class ToolMode(StrEnum):
    NONE = "none"  # no calls (tools are not shown to the model)
    AUTO = "auto"  # the model decides
    REQUIRED = "required"  # at least one call (exactly one without parallel calls)
    NAMED = "named"  # one call of the named function


class ToolUse(BaseModel):
    """A chat body's structured-output and tool settings, checked against each other."""

    model_config = ConfigDict(frozen=True)

    tools: tuple[Tool, ...] = ()
    mode: ToolMode = ToolMode.NONE
    named: str | None = None  # the function, in NAMED mode
    parallel: bool = True
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may hold tool calls."""
        return bool(self.tools) and self.mode is not ToolMode.NONE

    @property
    def forced(self) -> bool:
        """Whether the answer must be tool calls (`required`, or a named function)."""
        return bool(self.tools) and self.mode in (ToolMode.REQUIRED, ToolMode.NAMED)

    def prompt_tools(self) -> list[dict[str, Any]] | None:
        """The tool definitions a chat template is given (none when calls are off)."""
        if not self.calls_tools:
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def names(self) -> set[str]:
        return {tool.function.name for tool in self.tools}

    @cached_property
    def constraint(self) -> Constraint | None:
        """The grammar the answer must follow; None when it is free text (built once: the
        edge compiles it, and each candidate entity's request carries it)."""
        content = self._content_schema()
        if self.forced:
            return Constraint(kind=ConstraintKind.LARK, source="start: calls\n" + self._calls())
        if self.calls_tools and content is not None:  # auto: calls, or the asked-for JSON
            start = f"start: calls | %json{_compact(content)}\n"
            return Constraint(kind=ConstraintKind.LARK, source=start + self._calls())
        if content is not None:
            return Constraint.json_schema(content)
        return None

    def _content_schema(self) -> JsonObject | None:
        fmt = self.response_format
        if isinstance(fmt, JsonObjectFormat):
            return {"type": "object"}
        if isinstance(fmt, JsonSchemaFormat):
            return fmt.json_schema.schema_
        return None

    def _calls(self) -> str:
        """Lark rules (llguidance's dialect) for `calls`: tool-call blocks, each one call
        of a declared function (of the named one only, when one is named) with valid
        arguments."""
        chosen = [
            t.function
            for t in self.tools
            if self.mode is not ToolMode.NAMED or t.function.name == self.named
        ]
        one_call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        "arguments": f.schema_of_parameters(),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for f in chosen
            ]
        }
        many = self.parallel and self.mode is not ToolMode.NAMED
        return (
            f"calls: {'call+' if many else 'call'}\n"
            f'call: "{OPEN}" %json{_compact(one_call)} "{CLOSE}"\n'
        )


def _compact(schema: dict[str, Any]) -> str:
    """A schema for a Lark `%json{...}`, producing compact JSON (no free whitespace, which
    a model, random weights included, could pad forever)."""
    options = {"whitespace_flexible": False}
    return json.dumps({**schema, "x-guidance": options})


def tool_use(
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None,
) -> ToolUse:
    """The body's settings as one `ToolUse`, or a 400 that says what to change."""
    tools = tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidParameter(f"tools: at most {MAX_TOOLS} tools; got {len(tools)}")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidParameter("tools: two tools have the same function name; names must differ")
    named = None
    if isinstance(tool_choice, NamedToolChoice):
        mode, named = ToolMode.NAMED, tool_choice.function.name
        if named not in names:
            raise InvalidParameter(
                "tool_choice names a function that is not in tools; name one of the tools"
            )
    else:
        mode = ToolMode(tool_choice or ("auto" if tools else "none"))
        if mode is ToolMode.REQUIRED and not tools:
            raise InvalidParameter('tool_choice "required" needs at least one tool in tools')
    if parallel_tool_calls is not None and not tools:
        raise InvalidParameter("parallel_tool_calls is only allowed with tools")
    use = ToolUse(
        tools=tuple(tools),
        mode=mode,
        named=named,
        parallel=parallel_tool_calls is not False,
        response_format=response_format,
    )
    _check_compiles(use)
    return use


def _check_compiles(use: ToolUse) -> None:
    """A 400 naming the part the grammar library cannot compile, or that is too large."""
    try:
        _compile_each(use)
    except ValidationError:  # a grammar longer than `Constraint` takes
        raise InvalidParameter(
            f"the tools and response_format make a grammar of more than {MAX_SOURCE_CHARS} "
            "characters: send smaller schemas"
        ) from None


def _compile_each(use: ToolUse) -> None:
    fmt = use.response_format
    if isinstance(fmt, JsonSchemaFormat):
        why = problem(Constraint.json_schema(fmt.json_schema.schema_))
        if why is not None:
            raise InvalidParameter(
                f"response_format.json_schema.schema cannot be compiled: {_short(why)}"
            )
    for i, tool in enumerate(use.tools):
        why = problem(Constraint.json_schema(tool.function.schema_of_parameters()))
        if why is not None:
            raise InvalidParameter(
                f"tools[{i}].function.parameters cannot be compiled: {_short(why)}"
            )
    constraint = use.constraint
    # A lone schema was compiled just above; only a grammar combining parts is new.
    if constraint is None or constraint.kind is not ConstraintKind.LARK:
        return
    if (why := problem(constraint)) is not None:
        raise InvalidParameter(f"the tools and response_format cannot be compiled: {_short(why)}")


def _short(why: str) -> str:
    """The library's reason, on one line and bounded (it may quote the schema)."""
    line = " ".join(why.split())
    return line if len(line) <= 300 else line[:297] + "..."


# -- reading calls back ---------------------------------------------------------------------
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


class FoundCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    arguments: str  # JSON text, compact


def parse_calls(text: str, names: set[str]) -> list[FoundCall] | None:
    """The tool calls `text` is made of (only blocks, whitespace between them), each naming
    a declared function with a JSON object of arguments; None when it is anything else."""
    stripped = text.strip()
    if not stripped.startswith(OPEN):
        return None
    calls, end = [], 0
    for match in _BLOCK.finditer(stripped):
        if stripped[end : match.start()].strip():
            return None
        end = match.end()
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            return None
        name, arguments = call["name"], call["arguments"]
        if name not in names or not isinstance(arguments, dict):
            return None
        calls.append(FoundCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))
    if not calls or stripped[end:].strip():
        return None
    return calls


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def may_become_calls(text: str) -> bool:
    """Whether free text seen so far could still turn out to be tool calls (it is empty
    or whitespace, or starts like a call block): a stream holds it back meanwhile."""
    stripped = text.lstrip()
    return stripped.startswith(OPEN) or OPEN.startswith(stripped)
