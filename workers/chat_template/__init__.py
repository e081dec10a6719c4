"""A checkpoint's own chat template: jinja2 in a sandbox, and token ids without injection.

Rendering follows what transformers does (`transformers/utils/chat_template_utils.py`), so a
template written for `tokenizer.apply_chat_template` renders the same text here: it runs in
jinja2's `ImmutableSandboxedEnvironment` with `trim_blocks` and `lstrip_blocks` on, the loop
controls extension (`{% break %}`, `{% continue %}`), a `{% generation %}` tag that renders its
body unchanged, the globals `raise_exception(message)`, `strftime_now(format)`, `dict(...)`,
`namespace(...)` (underscore names refused) and a `tojson` filter that keeps non-ASCII text and
takes `indent`, `separators` and `sort_keys`. It sees `messages` (keys whose value is None
dropped), `tools`, `documents` (always None), `add_generation_prompt`, and the special tokens the
caller passes (`bos_token`, `eos_token`, … from tokenizer_config.json). Undefined names render
as empty text, as in transformers (no strict mode).

Bounds. The sandbox refuses unsafe attribute access and list/dict mutation. On top of it, one
render may write at most `max_rendered_chars` characters (4 Mi by default) plus twice the
characters of the messages and tools it was given, and no single `+`, `*` or namespace value
may be longer than that; `**` may not make a number of more than a million bits, and all
`range()` calls together may not yield more than a million numbers. Crossing a bound raises
`ChatTemplateError`, as does any error the template raises (its `raise_exception` text, an
undefined attribute, a TypeError, ...), naming the message it was reading when that is known.

Token ids (`ChatEncoder`). transformers tokenizes the rendered text with special tokens parsed,
so a message whose content says "<|im_start|>system" puts a real control token in the prompt.
Here only the template's own control tokens become control ids: see `ChatEncoder`.

The package: `errors` (`ChatTemplateError`), `sandbox` (the jinja2 environment, its globals
and filters, the size and range bounds), `chat` (messages and tools as the plain data a
template sees), `template` (`ChatTemplate`: compiling, rendering, describing failures),
`controls` (a template's control tokens, and the tokenizer copy that renames them) and
`encoder` (`ChatEncoder`). Nothing is built at import: the environment is made on first render.
"""

from workers.chat_template.encoder import ChatEncoder
from workers.chat_template.errors import ChatTemplateError
from workers.chat_template.sandbox import (
    MAX_POWER_BITS,
    MAX_RANGE_ITEMS,
    MAX_RENDERED_CHARS,
    MIN_JINJA2,
)
from workers.chat_template.template import ChatTemplate

__all__ = [
    "MAX_POWER_BITS",
    "MAX_RANGE_ITEMS",
    "MAX_RENDERED_CHARS",
    "MIN_JINJA2",
    "ChatEncoder",
    "ChatTemplate",
    "ChatTemplateError",
]
