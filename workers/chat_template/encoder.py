"""`ChatEncoder`: a chat's token ids, with control ids only where the template wrote them."""

from __future__ import annotations

import bisect
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.chat_template.chat import _Chat, _prepare, _strings
from workers.chat_template.controls import _build_renamed, _Controls, _find_controls, _Renamed
from workers.chat_template.errors import ChatTemplateError
from workers.chat_template.template import ChatTemplate

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RawTokenizer


@dataclass(frozen=True)
class _Layout:
    """The rendered text cut into template text and message contents, in order."""

    pieces: list[tuple[str, int | None]]  # (text, message index when it is that one's content)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)

    def content_spans(self) -> list[tuple[int, int]]:
        spans, at = [], 0
        for text, message in self.pieces:
            if message is not None and text:
                spans.append((at, at + len(text)))
            at += len(text)
        return spans


class ChatEncoder:
    """Token ids of chats rendered by a `ChatTemplate`, with control ids only where the template
    itself wrote control tokens, and otherwise exactly transformers' ids.

    transformers renders the template and tokenizes the text with added tokens parsed. The HF
    `tokenizers` library splits a text at added tokens first and runs the normalizer,
    pre-tokenizer and model on each piece between them; flags decide the details (`lstrip` and
    `rstrip` absorb whitespace around the token, `single_word` needs word boundaries,
    `normalized` matches after normalizing, and a Metaspace pre-tokenizer with
    `prepend_scheme="first"` adds its "▁" only to a piece at offset 0 of the whole text). So
    `encode`:

    1. renders the chat twice: with the real message contents, and with each non-empty string
       content replaced by a random sentinel. Putting the contents back where the sentinels are
       must give the real text; then it is known which characters are message content.
    2. tokenizes the real text as transformers does and checks, by offsets, that no control id
       was spelled by message content (its span covers a non-blank character of content and
       spells the token; an `<unk>` the model gives for unknown characters is not one). That is
       the answer, transformers' ids, unless a message holds control-token text.
    3. otherwise tokenizes the text with a copy of the tokenizer whose control tokens are
       renamed to unguessable aliases (same flags, same order), after replacing the control
       tokens in the template's text by their aliases: `tokenizers` then splits at the
       template's tokens exactly as before, with every flag and offset rule kept, while control
       text inside content is plain text. The alias ids are mapped back to the real ids, and
       the count of control ids is checked against the count the template wrote. (This gives
       what transformers gives with `sanitize_control_tokens=True`; the tests compare.)

    When the contents cannot be put back (the template changes them: `trim`, `upper`,
    `split`, JSON-escaping, ...), the real text is tokenized as transformers does only if no
    message content holds control-token text; otherwise `ChatTemplateError` says which message
    holds it. Control-token text anywhere else (a role, a name, a tool) is refused up front:
    only content is kept apart. Message content given as a list of parts is not kept apart
    either, so its control-token text is refused too.
    """

    def __init__(self, template: ChatTemplate, tokenizer: RawTokenizer) -> None:
        """`tokenizer` parses added tokens (its `encode_special_tokens` is off). The renamed
        copy is built from it the first time a message holds control-token text."""
        self.template = template
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._controls: _Controls | None = None
        self._renamed: _Renamed | str | None = None  # str: why it cannot be built

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        chat = _prepare(messages, tools)
        controls = self._control_tokens()
        self._refuse_control_text_outside_content(chat, controls)
        real = self.template._render(chat, add_generation_prompt=add_generation_prompt)
        layout = self._layout(chat, real, add_generation_prompt)
        if layout is None:
            held = self._content_with_control_text(chat, controls)
            if held is not None:
                index, token = held
                raise ChatTemplateError(
                    f"{chat.where(index)} holds special-token text {token!r}, which this chat "
                    "template cannot keep apart from its own control tokens (the template "
                    "changes message text, e.g. trims it); remove it from the message"
                )
            return self._encode(self._tokenizer, real)[0]
        ids, offsets = self._encode(self._tokenizer, real)
        if not self._control_id_in_content(ids, offsets, layout, controls):
            return ids
        return self._encode_renamed(chat, layout, controls)

    @staticmethod
    def _encode(tokenizer: RawTokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        # encode_batch releases the GIL (encode holds it): see HFTokenizer.encode.
        encoding = tokenizer.encode_batch([text], add_special_tokens=False)[0]
        return list(encoding.ids), list(encoding.offsets)

    def _control_tokens(self) -> _Controls:
        if self._controls is None:
            self._controls = _find_controls(self.template.literal_text(), self._tokenizer)
        return self._controls

    def _control_text(self, text: str, controls: _Controls) -> str | None:
        """The first control token `text` holds, as written or (for normalized ones) once
        normalized; None if it holds none."""
        found = controls.pattern.search(text)
        if found is not None:
            return found.group()
        normalizer = self._tokenizer.normalizer
        if controls.normalized and normalizer is not None:
            normal = normalizer.normalize_str(text)
            for token in controls.normalized:
                if token in normal:
                    return token
        return None

    def _refuse_control_text_outside_content(self, chat: _Chat, controls: _Controls) -> None:
        for i, message in enumerate(chat.messages):
            for key, value in message.items():
                if key == "content" and isinstance(value, str):
                    continue
                for text in _strings({key: value}):
                    token = self._control_text(text, controls)
                    if token is not None:
                        raise ChatTemplateError(
                            f"{chat.where(i)}: its {key!r} holds special-token text "
                            f"{token!r}; only a message's text content may hold such text "
                            "(it is kept as plain text there)"
                        )
        for j, tool in enumerate(chat.tools or []):
            for text in _strings(tool):
                token = self._control_text(text, controls)
                if token is not None:
                    raise ChatTemplateError(f"tools[{j}] holds special-token text {token!r}")

    def _content_with_control_text(
        self, chat: _Chat, controls: _Controls
    ) -> tuple[int, str] | None:
        for i, message in enumerate(chat.messages):
            content = message.get("content")
            if isinstance(content, str):
                token = self._control_text(content, controls)
                if token is not None:
                    return i, token
        return None

    def _layout(self, chat: _Chat, real: str, add_generation_prompt: bool) -> _Layout | None:
        """Which characters of `real` are message content, from a render with sentinels in place
        of the contents; None if the contents do not go back in place (the template changed
        them, or took another branch)."""
        mark = "\U000f8000" + secrets.token_hex(8)
        sentinel = re.compile(re.escape(mark) + r"(\d+)\U000f8001")
        masked_messages = []
        masked_indices = set()
        for i, message in enumerate(chat.messages):
            content = message.get("content")
            if isinstance(content, str) and content:
                if mark in content:  # a 64-bit secret, drawn just now
                    return None
                message = {**message, "content": f"{mark}{i}\U000f8001"}
                masked_indices.add(i)
            masked_messages.append(message)
        masked_chat = _Chat(masked_messages, chat.tools, chat.chars)
        try:
            masked = self.template._render(masked_chat, add_generation_prompt=add_generation_prompt)
        except ChatTemplateError:
            return None
        cut = sentinel.split(masked)
        pieces: list[tuple[str, int | None]] = [(cut[0], None)]
        for k in range(1, len(cut), 2):
            index = int(cut[k])
            if index not in masked_indices:  # the template rewrote a sentinel's digits
                return None
            pieces.append((chat.messages[index]["content"], index))
            pieces.append((cut[k + 1], None))
        layout = _Layout([(text, i) for text, i in pieces if text or i is not None])
        return layout if layout.text == real else None

    def _spells(self, text: str, token: str, controls: _Controls) -> bool:
        """Whether `text` spells control token `token` (for a normalized one: once normalized).
        A control id whose text does not (an `<unk>` the model gave for unknown characters)
        came from the model, not from an injected token."""
        if token in text:
            return True
        normalizer = self._tokenizer.normalizer
        return (
            token in controls.normalized
            and normalizer is not None
            and token in normalizer.normalize_str(text)
        )

    def _control_id_in_content(
        self, ids: list[int], offsets: list[tuple[int, int]], layout: _Layout, controls: _Controls
    ) -> bool:
        """Whether a control id was spelled by message content: its span covers a non-blank
        character of content (whitespace there may be absorbed by a template token's `lstrip`
        or `rstrip`, as in transformers) and spells the token."""
        spans = layout.content_spans()
        if not spans:
            return False
        starts = [start for start, _ in spans]
        text = layout.text
        for token_id, (start, end) in zip(ids, offsets, strict=True):
            token = controls.text_of.get(token_id)
            if token is None:
                continue
            k = max(bisect.bisect_right(starts, start) - 1, 0)
            while k < len(spans) and spans[k][0] < end:
                low, high = max(start, spans[k][0]), min(end, spans[k][1])
                if low < high and text[low:high].strip():
                    if self._spells(text[start:end], token, controls):
                        return True
                    break
                k += 1
        return False

    def _encode_renamed(self, chat: _Chat, layout: _Layout, controls: _Controls) -> list[int]:
        held = self._content_with_control_text(chat, controls)
        where = chat.where(held[0]) if held is not None else "a message"
        token = held[1] if held is not None else "a control token"
        renamed = self._renamed_tokenizer(controls)
        if isinstance(renamed, str):
            raise ChatTemplateError(
                f"{where} holds special-token text {token!r}, which cannot be kept apart from "
                f"the chat template's control tokens with this tokenizer ({renamed}); remove it "
                "from the message"
            )
        texts: list[str] = []
        placed = 0
        for text, message in layout.pieces:
            if message is not None:
                if renamed.secret in text:
                    raise ChatTemplateError(f"{chat.where(message)} holds reserved text")
                texts.append(text)
            else:
                replaced, count = controls.pattern.subn(lambda m: renamed.alias[m.group()], text)
                texts.append(replaced)
                placed += count
        text = "".join(texts)
        ids, offsets = self._encode(renamed.tokenizer, text)
        written = sum(1 for i in ids if i in renamed.alias_ids)
        # The model's own vocabulary may hold a control token (Llama's <s> is id 1): it must
        # not have spelled one from message text either.
        spelled = any(
            self._spells(text[start:end], controls.text_of[i], controls)
            for i, (start, end) in zip(ids, offsets, strict=True)
            if i in controls.in_model_vocab
        )
        if written != placed or spelled:
            raise ChatTemplateError(
                f"{where} holds special-token text {token!r}, which this tokenizer does not "
                "keep apart from the chat template's control tokens; remove it from the message"
            )
        return [renamed.remap.get(i, i) for i in ids]

    def _renamed_tokenizer(self, controls: _Controls) -> _Renamed | str:
        with self._lock:
            if self._renamed is None:
                self._renamed = _build_renamed(self._tokenizer, controls)
            return self._renamed
