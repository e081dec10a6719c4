"""Invalid keywords: words or phrases whose presence blocks a request or a response.

Matching is on case-folded text (`str.casefold`, so `STRASSE` matches `Straße`) and by
whole word or phrase: a keyword that starts with a word character (`\\w`, Unicode) must not
follow one, and one that ends with a word character must not precede one (`class` does not
match `classic`; `c++` matches in `I like c++!`). Scripts written without spaces between
words (Han, kana, Thai, Lao, Khmer, Myanmar) have no such boundary, so a keyword's first or
last character from one of them matches wherever it stands. Keywords are otherwise literal:
spaces and punctuation match themselves.

All keywords are compiled into one regular expression: an alternation factored by common
prefix (a trie), which tries longer keywords first. A flat `kw1|kw2|...` alternation tries
every keyword at every position (1.4 s for 1,000 keywords over 100 KB); the factored one
reads each position once per prefix level (about 40 ms).

Folding can lengthen text (`ß` folds to `ss`), so matching runs on the folded text and maps
the spans back to the caller's text; a keyword's span in the original text is never longer
than its folded length (`longest`).
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

MAX_KEYWORD_LENGTH = 256
_NESTING = 100  # prefix levels nested in the regex before the rest is a flat alternation
_WORD = re.compile(r"\w")
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003134f]"
)
_NOT_AFTER_WORD = r"(?<!\w)"
_NOT_BEFORE_WORD = r"(?!\w)"


def _needs_boundary(ch: str) -> bool:
    return _WORD.match(ch) is not None and _UNSPACED.match(ch) is None


@dataclass(frozen=True)
class KeywordSpan:
    """Where a keyword occurs: `text[start:end]` of the text that was searched."""

    start: int
    end: int


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    terminal: bool = False


def _suffixes(node: _Node, prefix: str) -> Iterator[str]:
    if node.terminal:
        yield prefix
    for ch, child in node.children.items():
        yield from _suffixes(child, prefix + ch)


def _ending(last: str) -> str:
    return _NOT_BEFORE_WORD if _needs_boundary(last) else ""


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _continuations(node: _Node, last: str, depth: int) -> str:
    """A regex for every keyword ending below `node` (whose path ends in `last`), longest
    first: each child's branch, then ending here. Past `_NESTING` levels the rest is a flat
    alternation sorted longest first (Python's regex parser recurses per nested group)."""
    if depth >= _NESTING:
        rest = sorted(_suffixes(node, ""), key=lambda s: (-len(s), s))
        return _group([re.escape(s) + _ending(s[-1] if s else last) for s in rest])
    alternatives: list[str] = []
    for ch in sorted(node.children):
        literal, child = ch, node.children[ch]
        while not child.terminal and len(child.children) == 1:  # a chain: one literal
            (next_ch, child), *_ = child.children.items()
            literal += next_ch
        alternatives.append(re.escape(literal) + _continuations(child, literal[-1], depth + 1))
    if node.terminal:
        alternatives.append(_ending(last))
    return _group(alternatives)


def _compile(folded: Sequence[str]) -> re.Pattern[str]:
    root = _Node()
    for keyword in folded:
        node = root
        for ch in keyword:
            node = node.children.setdefault(ch, _Node())
        node.terminal = True
    bounded, free = _Node(), _Node()
    for ch, child in root.children.items():
        (bounded if _needs_boundary(ch) else free).children[ch] = child
    parts: list[str] = []
    if bounded.children:
        parts.append(_NOT_AFTER_WORD + _continuations(bounded, "", 0))
    if free.children:
        parts.append(_continuations(free, "", 0))
    return re.compile("|".join(parts))


def _fold(text: str) -> tuple[str, list[int] | None]:
    """`text` case-folded, and for each folded character the index of the character of
    `text` it came from (None when folding kept one character per character, the usual
    case). `str.casefold` folds each character on its own, so this is exact."""
    folded = text.casefold()
    if len(folded) == len(text):
        return folded, None
    origin: list[int] = []
    for i, ch in enumerate(text):
        origin.extend([i] * len(ch.casefold()))
    return folded, origin


class KeywordMatcher:
    """Finds invalid keywords in text. Built once per keyword list (`keyword_matcher`
    caches them) and safe to share: it holds only a compiled pattern."""

    def __init__(self, keywords: Sequence[str]) -> None:
        cleaned: list[str] = []
        for i, keyword in enumerate(keywords):
            if len(keyword) > MAX_KEYWORD_LENGTH:
                raise ValueError(f"keyword {i} is longer than {MAX_KEYWORD_LENGTH} characters")
            if not keyword.strip():
                raise ValueError(f"keyword {i} is empty or only whitespace")
            cleaned.append(keyword.strip())
        if not cleaned:
            raise ValueError("no keywords")
        self.keywords: tuple[str, ...] = tuple(cleaned)
        folded = sorted({k.casefold() for k in cleaned}, key=lambda k: (-len(k), k))
        self.longest: int = len(folded[0])
        """The longest keyword once folded: no match spans more characters of the text."""
        self._pattern = _compile(folded)

    def search(self, text: str, pos: int = 0, endpos: int | None = None) -> KeywordSpan | None:
        """The first keyword occurrence starting at or after `pos` (the characters before
        `pos` still count as its left neighbour), reading no further than `endpos` (the
        text is taken to end there), or None."""
        folded, origin = _fold(text if endpos is None else text[:endpos])
        folded_pos = pos if origin is None else bisect_left(origin, pos)
        match = self._pattern.search(folded, folded_pos)
        return None if match is None else _span(match, origin)

    def finditer(self, text: str) -> Iterator[KeywordSpan]:
        """Every non-overlapping occurrence, in text order."""
        folded, origin = _fold(text)
        for match in self._pattern.finditer(folded):
            yield _span(match, origin)


def _span(match: re.Match[str], origin: list[int] | None) -> KeywordSpan:
    if origin is None:
        return KeywordSpan(match.start(), match.end())
    return KeywordSpan(origin[match.start()], origin[match.end() - 1] + 1)


@functools.lru_cache(maxsize=256)
def keyword_matcher(keywords: tuple[str, ...]) -> KeywordMatcher:
    """The matcher of a keyword list, compiled once per distinct list (each query of an
    endpoint asks for the same one)."""
    return KeywordMatcher(keywords)
