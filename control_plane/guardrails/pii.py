"""PII found in text by documented patterns: e-mail addresses, phone numbers, US social
security numbers, payment-card numbers and IP addresses.

Each kind is a *detector*: a zero-width start pattern that says where a match may begin
(the left boundary: not inside a longer word, number or address) and one or more shapes
matched from that start, followed by a check the regex cannot express (Luhn, SSN number
ranges, `ipaddress`). Every shape is matched with `endpos = start + horizon`, so what a
detector decides at a start depends only on the text from `PII_CONTEXT` characters before
it to `horizon` characters after it. That locality is what lets a stream be scanned piece by
piece with a bounded hold-back (`stream_guard`), and it also bounds the work: each start
costs at most a horizon's worth of matching, whatever the text around it.

Candidates may overlap (e.g. digits inside an e-mail's local part); they are resolved left
to right: the earliest start wins, at the same start the longest, then the order of
`PiiKind`. The sweep is left to right (rather than "longest anywhere first") because a
choice then never depends on text after it, so a stream decides exactly as a whole text.

Patterns use ASCII classes on purpose: a digit or letter of another script is neither part
of a phone number nor a reason to miss one (`IP是10.0.0.1` is flagged).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class PiiKind(StrEnum):
    EMAIL_ADDRESS = "EMAIL_ADDRESS"
    PHONE_NUMBER = "PHONE_NUMBER"
    US_SSN = "US_SSN"
    CREDIT_CARD = "CREDIT_CARD"
    IP_ADDRESS = "IP_ADDRESS"


@dataclass(frozen=True)
class PiiFinding:
    """One PII value: `text[start:end]` is the value (never kept here, so a finding can be
    logged)."""

    kind: PiiKind
    start: int
    end: int


def mask_token(kind: PiiKind) -> str:
    """What a masked value becomes: `[US_SSN]`, `[EMAIL_ADDRESS]`, ..."""
    return f"[{kind.value}]"


# A check after the regex: given the text, the start and the shape's match, the end of the
# value that is PII there (possibly shorter than the match), or None.
_Accept = Callable[[str, int, re.Match[str]], int | None]


@dataclass(frozen=True)
class _Detector:
    kind: PiiKind
    start: re.Pattern[str]  # zero-width: looks behind at most PII_CONTEXT characters
    reach: int  # and ahead at most this many (a scan to `stop + reach` finds all before stop)
    shapes: tuple[re.Pattern[str], ...]
    longest: int  # the longest value accepted
    lookahead: int  # how far a shape's right-boundary check reads past a value
    accept: _Accept

    @property
    def horizon(self) -> int:
        """How far past a start this detector reads: its longest value plus what the
        right-boundary check looks at after it."""
        return self.longest + self.lookahead

    def end_at(self, text: str, start: int) -> int | None:
        """The end of this kind's value starting at `start`, or None. Depends only on
        `text[start - PII_CONTEXT : start + horizon]` (and on the text ending sooner)."""
        limit = min(len(text), start + self.horizon)
        best: int | None = None
        for shape in self.shapes:
            match = shape.match(text, start, limit)
            if match is None:
                continue
            end = self.accept(text, start, match)
            if end is not None and end - start <= self.longest and (best is None or end > best):
                best = end
        return best


_DIGIT_RUN = re.compile(r"[0-9]+")


def _group_ends(start: int, match: re.Match[str], longest: int) -> list[tuple[int, str]]:
    """The ends a grouped number may be cut back to, longest first, each with the digits up
    to it: the match's own end and the end of each earlier digit group, within `longest`.
    A card or phone number followed by more digit groups (a CVV, the next number of a list)
    is still found instead of the whole run being refused."""
    ends: list[tuple[int, str]] = []
    digits = ""
    for run in _DIGIT_RUN.finditer(match.group()):
        digits += run.group()
        if run.end() <= longest:
            ends.append((start + run.end(), digits))
    ends.reverse()
    return ends


# ---- e-mail addresses --------------------------------------------------------------------
# local@domain: a local part of 1-64 of the characters people actually use (RFC 5321's
# limit), not preceded by one of them or by "@" (so "x@y@z.com" and an over-long local part
# are not addresses); a domain of dot-separated labels (1-63 letters, digits or inner
# hyphens) ending in an alphabetic TLD of 2-63 letters, not followed by a label character,
# "@" or ".x" (so a prefix of a longer domain is not taken). The whole address is at most
# 254 characters (RFC 5321's path limit), which bounds the detector's horizon at 256.
_LOCAL = r"A-Za-z0-9._%+\-"
_EMAIL_START = re.compile(rf"(?<![{_LOCAL}@])(?=[{_LOCAL}]{{1,64}}@[A-Za-z0-9])")
_EMAIL = re.compile(
    rf"[{_LOCAL}]{{1,64}}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}(?![A-Za-z0-9_@-]|\.[A-Za-z0-9])"
)


def _accept_email(text: str, start: int, match: re.Match[str]) -> int | None:
    return match.end()


# ---- phone numbers -----------------------------------------------------------------------
# Structure is required, never a bare run of digits (an order number, a year, a price):
# * North American: an optional "+1"/"1" prefix, a 3-digit area code (2-9 first) written
#   "(415)" or followed by a separator, a 3-digit exchange (2-9 first), a separator and 4
#   digits: (415) 555-0132, 415-555-0132, 415.555.0132, +1 415 555 0132, 1-800-555-0199.
# * International: a leading "+", a country code (1-3 digits, not 0), then either 7-14 more
#   digits (E.164, +442079460958) or 1-6 groups each introduced by a separator (space, dot,
#   dash) or written in parentheses: +44 20 7946 0958, +44 (0)20 7946 0958; 8-15 digits in
#   all (E.164 allows 15).
# Neither may follow a word character or "+", nor be followed by a word character or by
# ".digit"/"-digit" (part of a longer number). At most 15 digits and 4 characters of
# punctuation per group: 40 characters.
_PHONE_AFTER = r"(?![0-9A-Za-z_]|[.-][0-9])"
_PHONE_START = re.compile(
    r"(?<![0-9A-Za-z_+])"
    r"(?=\+[1-9]|\([2-9][0-9]{2}\)|1[ .-]?(?:\([2-9]|[2-9][0-9]{2}[ .-])|[2-9][0-9]{2}[ .-][2-9])"
)
_NANP = re.compile(
    r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}"
    + _PHONE_AFTER
)
_INTERNATIONAL = re.compile(
    r"\+[1-9](?:[0-9]{7,14}"
    r"|[0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\)[ .-]?[0-9]{1,12}|[ .-][0-9]{1,12}){1,6})" + _PHONE_AFTER
)
_PHONE_LONGEST = 40


def _accept_phone(text: str, start: int, match: re.Match[str]) -> int | None:
    if match.re is _NANP:
        return match.end()
    for end, digits in _group_ends(start, match, _PHONE_LONGEST):
        if 8 <= len(digits) <= 15:
            return end
    return None


# ---- US social security numbers ----------------------------------------------------------
# AAA-GG-SSSS or AAA GG SSSS (one separator, used twice), not inside a longer number (not
# after a word character or "digit-"/"digit.", not before a word character or
# "-digit"/".digit", nor, for the spaced form, " digit"), and a number the SSA issues: area
# not 000, 666 or 900-999, group not 00, serial not 0000. 11 characters.
_SSN_START = re.compile(r"(?<![0-9A-Za-z_])(?<![0-9][-.])(?=[0-9]{3}[- ][0-9]{2}[- ][0-9])")
_SSN_DASHED = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})(?![0-9A-Za-z_]|[-.][0-9])")
_SSN_SPACED = re.compile(r"([0-9]{3}) ([0-9]{2}) ([0-9]{4})(?![0-9A-Za-z_]|[-. ][0-9])")


def _accept_ssn(text: str, start: int, match: re.Match[str]) -> int | None:
    area, group, serial = match.groups()
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return match.end()


# ---- payment-card numbers ----------------------------------------------------------------
# 13-19 digits passing the Luhn check, either contiguous (a whole run of digits, not part
# of a longer one nor glued to a letter) or written in groups: a first group of 4 digits,
# then groups of 3-6 digits separated by one space or one dash, the same separator each
# time (4-4-4-4, 4-6-5, 4-4-4-4-3). A grouped run that is too long or fails Luhn is cut
# back to its longest earlier group end that passes (a number followed by a CVV). At most
# 6 groups: 39 characters.
_CARD_START = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9]{4})")
_CARD_RUN = re.compile(r"[0-9]{13,19}(?![0-9A-Za-z_])")
_CARD_GROUPS = re.compile(r"[0-9]{4}([ -])[0-9]{3,6}(?:\1[0-9]{3,6}){1,4}(?![0-9A-Za-z_])")
_CARD_LONGEST = 39


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment-card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_digits_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.strip("0") != "" and luhn_valid(digits)


def _accept_card(text: str, start: int, match: re.Match[str]) -> int | None:
    if match.re is _CARD_RUN:
        return match.end() if _card_digits_ok(match.group()) else None
    for end, digits in _group_ends(start, match, _CARD_LONGEST):
        if _card_digits_ok(digits):
            return end
    return None


# ---- IP addresses ------------------------------------------------------------------------
# IPv4: four dot-separated groups of 1-3 digits, not inside a longer dotted run or word
# ("v1.2.3.4", "1.2.3.4.5" are versions), each octet 0-255 as `ipaddress` reads it
# (leading zeros refused). 15 characters.
# IPv6: 2-8 groups of up to 4 hex digits each ending in ":", then an optional last hex group
# or an embedded IPv4 address; at least one hex digit; valid for `ipaddress`. A time
# ("12:30", "12:30:45") or a MAC address is not a valid IPv6 address, and "::" alone
# (C++'s scope operator) has no hex digit. A trailing ":" that belongs to the sentence is
# dropped. Not after a word character, ":" or "."; at most 45 characters (6 groups and an
# IPv4 address).
_IPV4_START = re.compile(r"(?<![0-9A-Za-z_.])(?=[0-9]{1,3}\.[0-9])")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z_]|\.[0-9])")
_IPV6_START = re.compile(r"(?<![0-9A-Za-z_:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)")
_IPV6 = re.compile(
    r"(?:[0-9A-Fa-f]{0,4}:){2,8}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?![0-9A-Za-z_:]|\.[0-9])"
)
_HEX = re.compile(r"[0-9A-Fa-f]")


def _accept_ip(text: str, start: int, match: re.Match[str]) -> int | None:
    value = match.group()
    if match.re is _IPV4:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return None
        return match.end()
    if _HEX.search(value) is None:
        return None
    tries = [value]
    if value.endswith(":") and not value.endswith("::"):
        tries.append(value[:-1])
    for candidate in tries:
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return start + len(candidate)
    return None


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        PiiKind.EMAIL_ADDRESS,
        start=_EMAIL_START,
        reach=66,
        shapes=(_EMAIL,),
        longest=254,
        lookahead=2,
        accept=_accept_email,
    ),
    _Detector(
        PiiKind.PHONE_NUMBER,
        start=_PHONE_START,
        reach=6,
        shapes=(_NANP, _INTERNATIONAL),
        longest=_PHONE_LONGEST,
        lookahead=2,
        accept=_accept_phone,
    ),
    _Detector(
        PiiKind.US_SSN,
        start=_SSN_START,
        reach=9,
        shapes=(_SSN_DASHED, _SSN_SPACED),
        longest=11,
        lookahead=2,
        accept=_accept_ssn,
    ),
    _Detector(
        PiiKind.CREDIT_CARD,
        start=_CARD_START,
        reach=4,
        shapes=(_CARD_RUN, _CARD_GROUPS),
        longest=_CARD_LONGEST,
        lookahead=1,
        accept=_accept_card,
    ),
    _Detector(
        PiiKind.IP_ADDRESS,
        start=_IPV4_START,
        reach=5,
        shapes=(_IPV4,),
        longest=15,
        lookahead=2,
        accept=_accept_ip,
    ),
    _Detector(
        PiiKind.IP_ADDRESS,
        start=_IPV6_START,
        reach=10,
        shapes=(_IPV6,),
        longest=45,
        lookahead=2,
        accept=_accept_ip,
    ),
)

PII_CONTEXT = 2
"""How many characters before a start any detector's look-behind reads."""

PII_HORIZON = max(d.horizon for d in _DETECTORS)
"""How many characters from a start (inclusive) decide whether PII starts there: 256, the
e-mail detector's (254-character addresses plus two characters of right boundary). Every
other kind needs less (card 40, IPv6 47, phone 42, IPv4 17, SSN 13)."""

PII_LONGEST = max(d.longest for d in _DETECTORS)
"""The longest PII value any detector accepts (254, an e-mail address)."""

_ORDER = {kind: i for i, kind in enumerate(PiiKind)}


def pii_candidates(text: str, lo: int = 0, hi: int | None = None) -> list[PiiFinding]:
    """Every value (unresolved: they may overlap) of every kind starting in `[lo, hi)`.
    Each one is decided by `text[start - PII_CONTEXT : start + PII_HORIZON]`, so a caller
    holding a window of a longer text gets the same candidates as the whole text would give
    for every start at least PII_HORIZON before the window's end."""
    stop = len(text) if hi is None else hi
    found: list[PiiFinding] = []
    for detector in _DETECTORS:
        # Starts before `stop` are found reading no further than `stop + reach`.
        for start_match in detector.start.finditer(text, lo, min(len(text), stop + detector.reach)):
            start = start_match.start()
            if start >= stop:
                break
            end = detector.end_at(text, start)
            if end is not None:
                found.append(PiiFinding(detector.kind, start, end))
    return found


def resolve(candidates: Iterable[PiiFinding], start: int = 0) -> list[PiiFinding]:
    """The non-overlapping findings among `candidates`, left to right: the earliest start
    wins, at the same start the longest, then `PiiKind` order. Candidates before `start`
    are ignored (a stream resumes the sweep where it left off)."""
    chosen: list[PiiFinding] = []
    free_from = start
    ordered = sorted(candidates, key=lambda c: (c.start, c.start - c.end, _ORDER[c.kind]))
    for candidate in ordered:
        if candidate.start >= free_from:
            chosen.append(candidate)
            free_from = candidate.end
    return chosen


def find_pii(text: str) -> list[PiiFinding]:
    """The PII in `text`: non-overlapping findings in text order."""
    return resolve(pii_candidates(text))


def mask_pii(text: str, findings: Sequence[PiiFinding] | None = None, offset: int = 0) -> str:
    """`text` with each finding replaced by its `mask_token`. `findings` (default: those
    `find_pii` gives) must be non-overlapping and in order; `offset` is the position of
    `text[0]` in the coordinates the findings use."""
    chosen = find_pii(text) if findings is None else findings
    parts: list[str] = []
    pos = 0
    for finding in chosen:
        parts.append(text[pos : finding.start - offset])
        parts.append(mask_token(finding.kind))
        pos = finding.end - offset
    parts.append(text[pos:])
    return "".join(parts)
