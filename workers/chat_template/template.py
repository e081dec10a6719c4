"""`ChatTemplate`: one chat template, compiled in the sandbox and rendered as transformers
renders it; any failure is a `ChatTemplateError` that names the message it was reading."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import jinja2
import jinja2.nodes

from workers.chat_template.chat import _Chat, _Message, _prepare
from workers.chat_template.errors import ChatTemplateError
from workers.chat_template.sandbox import _CURRENT, MAX_RENDERED_CHARS, _environment, _Render


def _template_line(tb: TracebackType | None) -> int | None:
    """The chat template's line an error came from (jinja2 rewrites tracebacks to show it)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class ChatTemplate:
    """One jinja2 chat template, compiled on first use, rendered as transformers renders it.

    `variables` are the extra names the template sees: transformers passes the special tokens
    of tokenizer_config.json (`bos_token`, `eos_token`, `pad_token`, ...).
    """

    def __init__(
        self,
        source: str,
        *,
        variables: Mapping[str, str] | None = None,
        max_rendered_chars: int = MAX_RENDERED_CHARS,
    ) -> None:
        self.source = source
        self.variables = dict(variables or {})
        self.max_rendered_chars = max_rendered_chars
        self._lock = threading.Lock()
        self._compiled: jinja2.Template | None = None
        self._compile_error: str | None = None
        self._literal_text: str | None = None

    def _template(self) -> jinja2.Template:
        if self._compiled is None and self._compile_error is None:
            with self._lock:
                if self._compiled is None and self._compile_error is None:
                    env = _environment()
                    try:
                        ast = env.parse(self.source)
                        self._compiled = env.from_string(self.source)
                    except jinja2.TemplateSyntaxError as exc:
                        self._compile_error = (
                            f"the chat template does not compile: {exc.message} (line {exc.lineno})"
                        )
                    else:
                        literals = {n.data for n in ast.find_all(jinja2.nodes.TemplateData)}
                        literals |= {
                            n.value
                            for n in ast.find_all(jinja2.nodes.Const)
                            if isinstance(n.value, str)
                        }
                        self._literal_text = "\0".join(sorted(literals))
        if self._compiled is None:
            raise ChatTemplateError(self._compile_error or "the chat template does not compile")
        return self._compiled

    def literal_text(self) -> str:
        """The template's text and string constants, joined by NULs: an added token that occurs
        in it is one the template writes (how transformers picks non-special control tokens)."""
        self._template()
        assert self._literal_text is not None
        return self._literal_text

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The chat as text; `ChatTemplateError` if the template fails or crosses a bound."""
        chat = _prepare(messages, tools)
        return self._render(chat, add_generation_prompt=add_generation_prompt)

    def _render(self, chat: _Chat, *, add_generation_prompt: bool) -> str:
        template = self._template()
        render = _Render(limit=self.max_rendered_chars + 2 * chat.chars)
        context = {
            **self.variables,
            "messages": [_Message(m, i, render) for i, m in enumerate(chat.messages)],
            "tools": chat.tools,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        token = _CURRENT.set(render)
        parts: list[str] = []
        written = 0
        try:
            for chunk in template.generate(context):
                written += len(chunk)
                if written > render.limit:
                    raise ChatTemplateError(
                        f"the chat template's output passed {render.limit} characters"
                    )
                parts.append(chunk)
        except ChatTemplateError:
            raise
        except Exception as exc:  # a template is foreign code: anything it raises is its failure
            raise ChatTemplateError(self._describe(exc, chat, render.last_message)) from exc
        finally:
            _CURRENT.reset(token)
        return "".join(parts)

    @staticmethod
    def _describe(exc: Exception, chat: _Chat, last_message: int | None) -> str:
        if type(exc) is jinja2.TemplateError:  # raise_exception(): the template's own words
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        line = _template_line(exc.__traceback__)
        if line is not None:
            text = f"{text} (chat template line {line})"
        if last_message is not None:
            return f"{chat.where(last_message)}: {text}"
        return text
