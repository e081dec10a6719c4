"""A guard on streamed output: text is released to the client only once nothing it holds can
still turn out to be (part of) a blocked keyword or PII value, so a blocked or masked span
never reaches the client, not even in part.

Invariant: the text released by all `feed`s and `finish` together is exactly what
`Guard.check` gives for the whole text, cut before the block, if any:

* nothing blocks: the concatenation equals `Guard.check(full).text` (masked when MASK);
* a block: the concatenation is a prefix of that text that ends before the first blocked
  span (keyword, or PII under BLOCK) starts and never in the middle of a masked value, and
  every later call releases nothing.

How: whether something the guard catches starts at a position depends only on the text from
2 characters before it (`PII_CONTEXT`, the look-behinds) to `Guard.horizon` characters from
it (each PII detector's longest value plus its right-boundary look-ahead; a keyword's folded
length plus one). So the last W = horizon - 1 characters are held back: every position
before that is decided. With PII scanned W is 255 (an e-mail address is at most 254
characters plus 2 of look-ahead; the other kinds need at most 47), with keywords only it is
the longest folded keyword. A masked value that starts before the held-back tail but
reaches into it is held too (whole), since a keyword inside it may yet be confirmed.

Each step scans only the unreleased window (the held-back tail, the new text and 2
characters of released context): work per `feed` is proportional to the new text plus W.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.endpoints.ai_gateway import PiiBehavior
from control_plane.guardrails.guard import Action, Guard, Hit, HitKind, reasons_of
from control_plane.guardrails.pii import PII_CONTEXT, PiiFinding, mask_pii, pii_candidates, resolve

_CONTEXT = max(PII_CONTEXT, 1)  # released characters kept for look-behinds (keywords need 1)


@dataclass(frozen=True)
class Release:
    """What may be sent now. `text`: safe to send (masked under MASK; may be empty).
    `blocked`: the stream is blocked from here on; `text` is what still precedes the block
    and every later release is empty. `reasons`: when blocked, the kinds that blocked;
    otherwise the kinds masked in `text`. `hits`: what this release caught (each masked
    value it holds, and on the blocking release the blocked occurrences found), for
    counting; reported once."""

    text: str = ""
    blocked: bool = False
    reasons: tuple[HitKind, ...] = ()
    hits: tuple[Hit, ...] = ()


class StreamGuard:
    """The output guard of one streamed choice: `feed` each piece of text as it comes,
    `finish` at the end, and send what each returns. An inactive guard passes text through
    as it comes."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.holdback = max(guard.horizon - 1, 0)
        """W: how many of the latest characters are held back (more while a masked value
        that reaches into them is held whole)."""
        self._window = ""  # the text from self._origin on
        self._origin = 0
        self._released = 0  # text before this position is released
        self._total = 0
        self._blocked: tuple[HitKind, ...] | None = None  # the reasons, once blocked
        self._finished = False

    @property
    def blocked(self) -> bool:
        return self._blocked is not None

    @property
    def held(self) -> int:
        """How many characters fed so far are not released yet (0 once blocked or done)."""
        if self._blocked is not None or self._finished:
            return 0
        return self._total - self._released

    def feed(self, text: str) -> Release:
        """Take the next piece of the stream; release what is now decided."""
        if self._finished:
            raise RuntimeError("StreamGuard.feed after finish")
        if self._blocked is not None:
            return Release(blocked=True, reasons=self._blocked)
        if not self.guard.active:
            return Release(text)
        self._window += text
        self._total += len(text)
        return self._advance(final=False)

    def finish(self) -> Release:
        """The stream ended: release (or block on) everything still held."""
        if self._finished or not self.guard.active:
            self._finished = True
            return Release(blocked=self.blocked, reasons=self._blocked or ())
        self._finished = True
        if self._blocked is not None:
            return Release(blocked=True, reasons=self._blocked)
        return self._advance(final=True)

    def _advance(self, final: bool) -> Release:
        window, origin = self._window, self._origin
        lo = self._released - origin  # positions in `window` from here on
        hi = len(window) if final else len(window) - self.holdback  # decided before here
        if hi <= lo and not final:
            return Release()
        block_at: int | None = None
        block_hits: list[Hit] = []
        keywords = self.guard.keywords
        if keywords is not None:
            # An occurrence starting before `hi` ends by `hi - 1 + longest`, and the
            # character after it is before `hi + longest`: that much decides every such start.
            span = keywords.search(window, lo, hi + keywords.longest)
            if span is not None and span.start < hi:
                block_at = span.start
                block_hits.append(Hit(HitKind.INVALID_KEYWORD, Action.BLOCK))
        findings: list[PiiFinding] = []
        if self.guard.scans_pii and hi > lo:
            chosen = resolve(pii_candidates(window, lo, hi), lo)
            if self.guard.pii is PiiBehavior.BLOCK:
                if chosen:
                    first = chosen[0].start
                    block_at = first if block_at is None else min(block_at, first)
                    block_hits.extend(Hit(HitKind.of(f.kind), Action.BLOCK) for f in chosen)
            else:
                findings = chosen
        cut = hi if block_at is None else min(block_at, hi)
        masked: list[PiiFinding] = []
        for finding in findings:
            if finding.end > cut:  # reaches past what is decided: hold it back, whole
                cut = min(cut, finding.start)
                break
            masked.append(finding)
        cut = max(cut, lo)
        text = mask_pii(window[lo:cut], masked, offset=lo)
        mask_hits = [Hit(HitKind.of(f.kind), Action.MASK) for f in masked]
        if block_at is not None:
            self._blocked = reasons_of(block_hits, blocked=True)
            self._window = ""
            return Release(text, True, self._blocked, tuple(mask_hits + block_hits))
        keep = max(cut - _CONTEXT, 0)
        self._window = window[keep:]
        self._origin = origin + keep
        self._released = origin + cut
        return Release(text, False, reasons_of(mask_hits, blocked=False), tuple(mask_hits))
