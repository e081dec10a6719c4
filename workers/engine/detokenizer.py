"""Incremental text for one choice: decode, hold back what may still change, cut at stops.

Text is released only when it is final: a trailing partial UTF-8 character (decoded as
U+FFFD) waits for the next token, and so do the last characters that could be the start of
a stop sequence. When a stop sequence appears, the text is cut before it.
"""

from __future__ import annotations

from workers.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer | None, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.sent = 0  # characters already released
        self.text = ""

    def add(self, token_id: int) -> bool:
        """Append a token; True when the text now contains a stop sequence."""
        if self.tokenizer is None:
            return False
        self.token_ids.append(token_id)
        search_from = max(0, len(self.text) - self._holdback)
        self.text = self.tokenizer.decode(self.token_ids)
        for stop in self.stop:
            at = self.text.find(stop, search_from)
            if at != -1:
                self.text = self.text[:at]
                return True
        return False

    def release(self, final: bool) -> str:
        """The text that became final since the last call (everything when `final`)."""
        end = len(self.text)
        if not final:
            if self.text.endswith("\ufffd"):
                end -= 1
            end = max(self.sent, end - self._holdback)
        new = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return new
