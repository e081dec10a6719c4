"""An AI-gateway guardrail of one direction (a request's input or a model's output) applied
to text: invalid keywords block, PII blocks or is masked (`pii.behavior`).

`safety` and `valid_topics` need a guard model and are not applied here (the API refuses
them elsewhere). What a check reports names kinds, never the matched text: verdicts end up
in error messages, logs, metrics and usage rows, and must not carry the PII or keyword they
caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from control_plane.endpoints.ai_gateway import AiGatewayConfig, GuardrailParameters, PiiBehavior
from control_plane.guardrails.keywords import KeywordMatcher, keyword_matcher
from control_plane.guardrails.pii import PII_HORIZON, PiiFinding, PiiKind, find_pii, mask_pii


class HitKind(StrEnum):
    """What a guardrail caught: an invalid keyword, a kind of PII (same names as `PiiKind`),
    or a guard model's verdict."""

    INVALID_KEYWORD = "INVALID_KEYWORD"
    EMAIL_ADDRESS = "EMAIL_ADDRESS"
    PHONE_NUMBER = "PHONE_NUMBER"
    US_SSN = "US_SSN"
    CREDIT_CARD = "CREDIT_CARD"
    IP_ADDRESS = "IP_ADDRESS"
    # The guard model's verdicts (`control_plane.query.guard_model`): the text is unsafe,
    # or about none of the valid topics.
    UNSAFE = "UNSAFE"
    OFF_TOPIC = "OFF_TOPIC"

    @classmethod
    def of(cls, kind: PiiKind) -> HitKind:
        return cls(kind.value)


class Action(StrEnum):
    BLOCK = "BLOCK"
    MASK = "MASK"


@dataclass(frozen=True)
class Hit:
    """One occurrence caught (one keyword occurrence, one PII value) and what was done."""

    kind: HitKind
    action: Action


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one text.

    `blocked`: the text must not go through. `reasons`: the kinds that decided the outcome,
    in `HitKind` order, without duplicates: when blocked, those that block; otherwise those
    that were masked (empty when nothing was caught). `text`: the text to use, masked when
    PII behavior is MASK, otherwise the text as given. `hits`: every occurrence caught, in
    text order, for counting."""

    blocked: bool
    reasons: tuple[HitKind, ...]
    text: str
    hits: tuple[Hit, ...]


def reasons_of(hits: Sequence[Hit], blocked: bool) -> tuple[HitKind, ...]:
    """The kinds that decided an outcome: those of blocking hits when blocked, else those
    of masking hits; each once, in `HitKind` order."""
    wanted = Action.BLOCK if blocked else Action.MASK
    kinds = {hit.kind for hit in hits if hit.action is wanted}
    return tuple(kind for kind in HitKind if kind in kinds)


class Guard:
    """The guardrail of one direction, built from that direction's parameters (None: no
    guardrail). Cheap to build (keyword lists are compiled once, see `keyword_matcher`) and
    immutable, so one can be built per request or kept per endpoint."""

    def __init__(self, parameters: GuardrailParameters | None) -> None:
        keywords = (parameters.invalid_keywords if parameters else None) or []
        self.keywords: KeywordMatcher | None = (
            keyword_matcher(tuple(keywords)) if keywords else None
        )
        pii = parameters.pii if parameters else None
        self.pii: PiiBehavior = (pii.behavior if pii else None) or PiiBehavior.NONE

    @classmethod
    def for_input(cls, gateway: AiGatewayConfig | None) -> Guard:
        """The guard of a request's text, from an endpoint's AI-gateway config."""
        guardrails = gateway.guardrails if gateway else None
        return cls(guardrails.input if guardrails else None)

    @classmethod
    def for_output(cls, gateway: AiGatewayConfig | None) -> Guard:
        """The guard of a model's text, from an endpoint's AI-gateway config."""
        guardrails = gateway.guardrails if gateway else None
        return cls(guardrails.output if guardrails else None)

    @property
    def scans_pii(self) -> bool:
        return self.pii in (PiiBehavior.BLOCK, PiiBehavior.MASK)

    @property
    def active(self) -> bool:
        """Whether this guard can change or stop anything (keywords, or PII BLOCK/MASK)."""
        return self.keywords is not None or self.scans_pii

    @property
    def horizon(self) -> int:
        """How many characters from a position decide whether something this guard catches
        starts there: a keyword needs its folded length plus one character (to see that no
        word character follows), PII needs `PII_HORIZON`. 0 when inactive."""
        needed = 0
        if self.keywords is not None:
            needed = self.keywords.longest + 1
        if self.scans_pii:
            needed = max(needed, PII_HORIZON)
        return needed

    def findings(self, text: str) -> list[PiiFinding]:
        """The PII this guard acts on in `text` (none when PII behavior is NONE)."""
        return find_pii(text) if self.scans_pii else []

    def check(self, text: str) -> Verdict:
        """Check one whole text (a request's message, a complete answer)."""
        if not self.active:
            return Verdict(blocked=False, reasons=(), text=text, hits=())
        hits: list[tuple[int, Hit]] = []
        if self.keywords is not None:
            for span in self.keywords.finditer(text):
                hits.append((span.start, Hit(HitKind.INVALID_KEYWORD, Action.BLOCK)))
        findings = self.findings(text)
        action = Action.MASK if self.pii is PiiBehavior.MASK else Action.BLOCK
        for finding in findings:
            hits.append((finding.start, Hit(HitKind.of(finding.kind), action)))
        hits.sort(key=lambda pair: pair[0])
        ordered = tuple(hit for _, hit in hits)
        blocked = any(hit.action is Action.BLOCK for hit in ordered)
        masked = mask_pii(text, findings) if action is Action.MASK and findings else text
        return Verdict(
            blocked=blocked, reasons=reasons_of(ordered, blocked), text=masked, hits=ordered
        )
