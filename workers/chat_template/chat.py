"""A chat as a template sees it: messages and tools rebuilt as plain JSON data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.chat_template.errors import ChatTemplateError
from workers.chat_template.sandbox import _Render


class _Message(dict[str, Any]):
    """A message as the template sees it: a plain dict that notes when it is read, so that an
    error can name the message the template was on. (The sandbox hides `_` attributes.)"""

    def __init__(self, data: Mapping[str, Any], index: int, render: _Render) -> None:
        super().__init__(data)
        self._index = index
        self._render = render

    def __getitem__(self, key: str) -> Any:
        self._render.last_message = self._index
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._render.last_message = self._index
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._render.last_message = self._index
        return super().__contains__(key)


def _plain(value: Any, where: str) -> Any:
    """`value` rebuilt from exact JSON types, so the template sees no object with methods of
    its own (a str subclass, an enum, ...)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ChatTemplateError(f"{where} has a key {key!r} that is not a string")
            plain[str.__str__(key)] = _plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ChatTemplateError(
        f"{where} is a {type(value).__name__}; chat template inputs are JSON data "
        "(strings, numbers, booleans, null, lists and objects)"
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string in plain data, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@dataclass(frozen=True)
class _Chat:
    """A chat's messages and tools as plain data, as the template will see them."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None
    chars: int  # characters of every string in messages and tools

    def role(self, index: int) -> Any:
        return self.messages[index].get("role")

    def where(self, index: int) -> str:
        return f"message {index} (role {self.role(index)!r})"


def _prepare(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> _Chat:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of objects with 'role' and 'content'")
    plain: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {i} is a {type(message).__name__}, not an object")
        # As transformers: a key whose value is None is dropped (templates test for the key).
        data = _plain({k: v for k, v in message.items() if v is not None}, f"message {i}")
        plain.append(data)
    if tools is not None:
        if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            raise ChatTemplateError("tools must be a list of objects (JSON schemas)")
        for j, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(f"tools[{j}] is a {type(tool).__name__}, not an object")
    plain_tools = None if tools is None else _plain(list(tools), "tools")
    chars = sum(len(s) for s in _strings(plain)) + sum(len(s) for s in _strings(plain_tools))
    return _Chat(plain, plain_tools, chars)
