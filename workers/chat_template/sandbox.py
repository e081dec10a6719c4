"""The jinja2 sandbox chat templates render in, as transformers sets it up, with bounds.

`_environment()` builds the one `ImmutableSandboxedEnvironment` on first use (after checking
the jinja2 release): loop controls, `{% generation %}`, transformers' globals and `tojson`, and
`+`, `*`, `**`, namespace values and `range()` held to the bounds of the current render
(`_Render`, reached through the `_CURRENT` context variable).
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.sandbox
from jinja2.runtime import Context
from jinja2.utils import Namespace

from workers.chat_template.errors import ChatTemplateError

MAX_RENDERED_CHARS = 4 * 1024 * 1024  # characters a render may write beyond 2x its inputs
MAX_RANGE_ITEMS = 1_000_000  # numbers all range() calls of one render may yield together
MAX_POWER_BITS = 1_000_000  # bits of the largest number `a ** b` may make
# jinja2 before 3.1.6 has known sandbox escapes (CVE-2024-56201, CVE-2024-56326,
# CVE-2025-27516), and a checkpoint's template is foreign code.
MIN_JINJA2 = (3, 1, 6)


@dataclass
class _Render:
    """The state of one render, reachable from the template's globals through `_CURRENT`."""

    limit: int
    range_left: int = MAX_RANGE_ITEMS
    last_message: int | None = None


_CURRENT: contextvars.ContextVar[_Render | None] = contextvars.ContextVar(
    "moeserve_chat_template_render", default=None
)


def _limit() -> int:
    render = _CURRENT.get()
    return MAX_RENDERED_CHARS if render is None else render.limit


def _check_size(size: int, what: str) -> None:
    limit = _limit()
    if size > limit:
        raise ChatTemplateError(f"the chat template built {what} of {size} items, past {limit}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sized = (str, list, tuple)
    if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        _check_size(len(left) + len(right), "a sum")
    elif operator == "*" and isinstance(left, sized) and isinstance(right, int):
        _check_size(len(left) * right, "a repetition")
    elif operator == "*" and isinstance(right, sized) and isinstance(left, int):
        _check_size(len(right) * left, "a repetition")
    elif (
        operator == "**"
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and abs(left).bit_length() * right > MAX_POWER_BITS
    ):
        raise ChatTemplateError(
            f"the chat template computes {left} ** {right}, a number of more than "
            f"{MAX_POWER_BITS} bits"
        )


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """transformers' environment, with `+`, `*` and `**` held to the render's bounds."""

    intercepted_binops = frozenset({"+", "*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}`: transformers marks assistant text with it (for
    training masks); here it renders its body unchanged, so templates that use it compile."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's own class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _check_slot(name: Any, value: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"a chat template may not store an underscore name ({name!r}) on a namespace"
        )
    if isinstance(value, (str, list, tuple, dict)):
        _check_size(len(value), "a namespace value")


class _TemplateNamespace(Namespace):
    """jinja2's `namespace`, refusing `_` names (no way to CPython internals) and values past
    the render's bounds (a namespace is how a template accumulates across loop iterations)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _check_slot(name, value)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_slot(name, value)
        Namespace.__setitem__(self, name, value)


class _DictFactory:
    """The template's `dict`: builds plain dicts and nothing else (no type to climb from)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)


def _raise_exception(message: Any) -> NoReturn:
    raise jinja2.exceptions.TemplateError(str(message))


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters and sorts keys; chat templates expect neither.
    seps = None if separators is None else (separators[0], separators[1])
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=seps, sort_keys=sort_keys
    )


def _bounded_range(*args: int) -> range:
    numbers = jinja2.sandbox.safe_range(*args)  # at most 100,000 per call
    render = _CURRENT.get()
    if render is not None:
        render.range_left -= len(numbers)
        if render.range_left < 0:
            raise ChatTemplateError(
                f"the chat template's range() calls yield more than {MAX_RANGE_ITEMS} numbers"
            )
    return numbers


_ENVIRONMENT_LOCK = threading.Lock()
_environment_instance: _Sandbox | None = None


def _environment() -> _Sandbox:
    global _environment_instance
    with _ENVIRONMENT_LOCK:
        if _environment_instance is None:
            version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
            if version < MIN_JINJA2:
                raise RuntimeError(
                    f"chat templates need jinja2>={'.'.join(map(str, MIN_JINJA2))} (older "
                    f"releases have sandbox escapes); jinja2 {jinja2.__version__} is installed"
                )
            env = _Sandbox(
                trim_blocks=True,
                lstrip_blocks=True,
                extensions=[jinja2.ext.loopcontrols, _GenerationTag],
            )
            env.filters["tojson"] = _tojson
            env.globals.update(
                raise_exception=_raise_exception,
                strftime_now=_strftime_now,
                dict=_DictFactory(),
                namespace=_TemplateNamespace,
                range=_bounded_range,
            )
            _environment_instance = env
        return _environment_instance
