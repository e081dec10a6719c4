"""A template's control tokens, and the tokenizer copy that renames them to unguessable
aliases so that control-token text in a message stays plain text (see `ChatEncoder`)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RawTokenizer


@dataclass(frozen=True)
class _Controls:
    """The added tokens that only the template may write (transformers' "control tokens"):
    every special token, and the non-special added tokens the template's text contains."""

    by_content: dict[str, int]
    text_of: dict[int, str]
    pattern: re.Pattern[str]  # any of them, longest first (so leftmost-longest, as tokenizers)
    normalized: tuple[str, ...]  # those matched after normalization (normalized=True)
    in_model_vocab: frozenset[int]  # ids the model could emit too (Llama's <s> = 1 is in it)


@dataclass(frozen=True)
class _Renamed:
    """A copy of the tokenizer whose control tokens are renamed to unguessable aliases."""

    tokenizer: RawTokenizer
    alias: dict[str, str]  # control token text -> its alias
    alias_ids: frozenset[int]  # the aliases' ids in `tokenizer`
    remap: dict[int, int]  # `tokenizer`'s added-token ids -> the original tokenizer's
    secret: str  # in every alias


def _find_controls(literal_text: str, tokenizer: RawTokenizer) -> _Controls:
    """The control tokens of `tokenizer` for a template whose `literal_text()` is given."""
    decoder = tokenizer.get_added_tokens_decoder()
    by_content: dict[str, int] = {}
    normalized: list[str] = []
    for token_id, token in sorted(decoder.items()):
        text = token.content
        if not text or text in by_content:
            continue
        if token.special or (text in literal_text and not text.isspace()):
            by_content[text] = token_id
            if token.normalized:
                normalized.append(text)
    model_vocab = tokenizer.get_vocab(with_added_tokens=False)
    longest_first = sorted(by_content, key=len, reverse=True)
    return _Controls(
        by_content=by_content,
        text_of={i: text for text, i in by_content.items()},
        pattern=re.compile("|".join(map(re.escape, longest_first)) or "(?!)"),
        normalized=tuple(normalized),
        in_model_vocab=frozenset(i for text, i in by_content.items() if model_vocab.get(text) == i),
    )


def _build_renamed(tokenizer: RawTokenizer, controls: _Controls) -> _Renamed | str:
    """A copy of `tokenizer` with `controls` renamed, or why there can be none."""
    from tokenizers import Tokenizer as RawTokenizer

    data = json.loads(tokenizer.to_str())
    entries = data.get("added_tokens")
    if not isinstance(entries, list):
        return "its tokenizer.json lists no added tokens"
    secret = secrets.token_hex(16)
    normalizer = tokenizer.normalizer
    alias: dict[str, str] = {}
    for k, entry in enumerate(entries):
        text = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(text, str) or text not in controls.by_content or text in alias:
            continue
        # Private-use characters never reach the model (the token is cut out first); a
        # token matched after normalization needs an alias the normalizer keeps as is.
        candidates = [f"\U000f8002{secret}{k:x}\U000f8003", f"zq{secret}{k:x}qz"]
        if entry.get("normalized") and normalizer is not None:
            candidates = [c for c in candidates if c in normalizer.normalize_str(c)]
        if not candidates:
            return f"its normalizer changes every alias for {text!r}"
        alias[text] = entry["content"] = candidates[0]
    renamed = RawTokenizer.from_str(json.dumps(data))
    model_ids = set(renamed.get_vocab(with_added_tokens=False).values())
    remap: dict[int, int] = {}
    alias_ids: set[int] = set()
    for token_id, token in tokenizer.get_added_tokens_decoder().items():
        new_id = renamed.token_to_id(alias.get(token.content, token.content))
        if new_id is None:
            return f"{token.content!r} has no id once renamed"
        if token.content in alias:
            if new_id in model_ids:
                return f"the alias of {token.content!r} collides with a model token"
            alias_ids.add(new_id)
        if new_id != token_id:
            remap[new_id] = token_id
    return _Renamed(renamed, alias, frozenset(alias_ids), remap, secret)
