"""AI-gateway guardrails applied to text: invalid keywords and PII (detect, block or mask),
for a whole text (`Guard.check`) or a stream (`StreamGuard`). Pure functions of text: no
I/O, nothing of the web layer; the query path decides what a verdict means for a request.

    guard = Guard.for_input(endpoint.ai_gateway)
    verdict = guard.check(text)          # blocked / reasons / text (masked) / hits

    out = StreamGuard(Guard.for_output(endpoint.ai_gateway))
    for piece in pieces:
        release = out.feed(piece)        # send release.text; stop if release.blocked
    release = out.finish()
"""

from control_plane.guardrails.guard import Action, Guard, Hit, HitKind, Verdict
from control_plane.guardrails.keywords import (
    MAX_KEYWORD_LENGTH,
    KeywordMatcher,
    KeywordSpan,
    keyword_matcher,
)
from control_plane.guardrails.pii import (
    PII_HORIZON,
    PiiFinding,
    PiiKind,
    find_pii,
    mask_pii,
    mask_token,
)
from control_plane.guardrails.stream_guard import Release, StreamGuard

__all__ = [
    "MAX_KEYWORD_LENGTH",
    "PII_HORIZON",
    "Action",
    "Guard",
    "Hit",
    "HitKind",
    "KeywordMatcher",
    "KeywordSpan",
    "PiiFinding",
    "PiiKind",
    "Release",
    "StreamGuard",
    "Verdict",
    "find_pii",
    "keyword_matcher",
    "mask_pii",
    "mask_token",
]
