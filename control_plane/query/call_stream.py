"""One streamed choice of a chat that may call tools: its text, as the replica streams it,
turned into what OpenAI streams (`delta.content`, or `delta.tool_calls` and finish_reason
"tool_calls").

Text that is, or may still become, tool-call blocks is held back: a client never sees the
markup. When calls are required every block is held and each call is sent whole as soon as
its block closes; with "auto" the text is held only while it could still be a call (empty,
or a prefix of `<tool_call>`), and sent as content from the moment it cannot. A forced
answer cut short by max_tokens sends what it held as content, with finish_reason "length".
A whole (not streamed) answer is the same text fed at once, so both read the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.query.tool_calling import (
    CLOSE,
    OPEN,
    FoundCall,
    ToolUse,
    call_id,
    may_become_calls,
    parse_calls,
)


@dataclass(frozen=True)
class SentCall:
    index: int  # the call's place among the choice's calls
    id: str
    call: FoundCall


@dataclass(frozen=True)
class Piece:
    """What one chunk of a choice sends: content, whole calls, or nothing yet."""

    content: str | None = None
    calls: tuple[SentCall, ...] = ()
    finish_reason: str | None = None


@dataclass
class CallStream:
    use: ToolUse
    _held: str = ""
    _free: bool = False  # decided: this choice is text (auto only)
    _sent: list[SentCall] = field(default_factory=list)

    def feed(self, text: str, finish_reason: str | None) -> Piece:
        if self._free:
            return Piece(content=text, finish_reason=finish_reason)
        self._held += text
        calls = self._closed_calls()
        if calls is None:  # not calls after all (auto): the text goes out as content
            return self._as_text(finish_reason)
        if finish_reason is None:
            if not self.use.forced and not self._sent and not may_become_calls(self._held):
                return self._as_text(None)
            return Piece(calls=calls)
        if not (self._sent or calls):
            return self._as_text(finish_reason)  # text after all, or a forced answer cut short
        leftover, self._held = self._held.strip(), ""
        done = "tool_calls" if (self._sent or calls) and finish_reason == "stop" else finish_reason
        return Piece(content=leftover or None, calls=calls, finish_reason=done)

    def _closed_calls(self) -> tuple[SentCall, ...] | None:
        """The calls whose blocks closed in the held text (taken out of it); None when a
        closed block is not a valid call of a declared function."""
        found: list[SentCall] = []
        while True:
            start = self._held.lstrip()
            end = start.find(CLOSE)
            if not start.startswith(OPEN) or end < 0:
                return tuple(found)
            block, rest = start[: end + len(CLOSE)], start[end + len(CLOSE) :]
            parsed = parse_calls(block, self.use.names())
            if parsed is None:
                return None if not (self._sent or found) else tuple(found)
            sent = SentCall(len(self._sent), call_id(), parsed[0])
            self._sent.append(sent)
            found.append(sent)
            self._held = rest

    def _as_text(self, finish_reason: str | None) -> Piece:
        self._free = True
        text, self._held = self._held, ""
        return Piece(content=text, finish_reason=finish_reason)
