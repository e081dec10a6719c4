"""The guardrails' text library (`control_plane.guardrails`): PII found by documented
patterns (and not in ordinary numbers), invalid keywords as whole words, the verdict of a
whole text, and the stream guard's invariant: what it releases is what the whole text's
check gives, cut before any block, so a blocked or masked span never reaches a client, not
even in part. Pure unit tests: no app, no I/O."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from control_plane.endpoints.ai_gateway import (
    AiGatewayConfig,
    GuardrailParameters,
    Guardrails,
    PiiBehavior,
    PiiSettings,
)
from control_plane.guardrails import (
    PII_HORIZON,
    Action,
    Guard,
    Hit,
    HitKind,
    KeywordMatcher,
    PiiFinding,
    PiiKind,
    Release,
    StreamGuard,
    find_pii,
    mask_pii,
    mask_token,
)
from control_plane.guardrails.pii import luhn_valid, pii_candidates, resolve

EMAIL, PHONE, SSN = PiiKind.EMAIL_ADDRESS, PiiKind.PHONE_NUMBER, PiiKind.US_SSN
CARD, IP = PiiKind.CREDIT_CARD, PiiKind.IP_ADDRESS


def _found(text: str) -> list[tuple[PiiKind, str]]:
    return [(f.kind, text[f.start : f.end]) for f in find_pii(text)]


def _guard(behavior: PiiBehavior | None = None, keywords: Sequence[str] | None = None) -> Guard:
    pii = PiiSettings(behavior=behavior) if behavior is not None else None
    kws = list(keywords) if keywords is not None else None
    return Guard(GuardrailParameters(pii=pii, invalid_keywords=kws))


# ---- PII: each kind in a sentence, found exactly and masked ---------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        (
            "Write to jane.doe+news@mail.example.co.uk. Thanks!",
            EMAIL,
            "jane.doe+news@mail.example.co.uk",
        ),
        ("<JOHN_SMITH@Example.COM> said hi", EMAIL, "JOHN_SMITH@Example.COM"),
        ("Call me at (415) 555-0132 tomorrow.", PHONE, "(415) 555-0132"),
        ("Call me at 415-555-0132, please", PHONE, "415-555-0132"),
        ("office: 415.555.0132", PHONE, "415.555.0132"),
        ("Dial +1 415 555 0132 now", PHONE, "+1 415 555 0132"),
        ("Toll free 1-800-555-0199.", PHONE, "1-800-555-0199"),
        ("London office +44 20 7946 0958 (ask for Ann)", PHONE, "+44 20 7946 0958"),
        ("or +44 (0)20 7946 0958", PHONE, "+44 (0)20 7946 0958"),
        ("E.164: +442079460958.", PHONE, "+442079460958"),
        ("My SSN is 123-45-6789.", SSN, "123-45-6789"),
        ("ssn 123 45 6789 on file", SSN, "123 45 6789"),
        ("Pay with 4111 1111 1111 1111 please", CARD, "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111 exp 12/29", CARD, "4111-1111-1111-1111"),
        ("card:4111111111111111", CARD, "4111111111111111"),
        ("amex 3782 822463 10005 ok", CARD, "3782 822463 10005"),
        ("server at 192.168.10.42:8080 is down", IP, "192.168.10.42"),
        ("ping 8.8.8.8.", IP, "8.8.8.8"),
        ("IP是10.0.0.1。", IP, "10.0.0.1"),
        ("host 2001:db8::8a2e:370:7334 answered", IP, "2001:db8::8a2e:370:7334"),
        ("loopback ::1 only", IP, "::1"),
        ("mapped ::ffff:192.0.2.1 too", IP, "::ffff:192.0.2.1"),
        (
            "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            IP,
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ),
        ("link-local fe80::1%eth0", IP, "fe80::1"),
        ("bound to 2001:db8::1: refused", IP, "2001:db8::1"),
    ],
)
def test_each_kind_is_found_exactly_and_masked(text: str, kind: PiiKind, value: str) -> None:
    assert _found(text) == [(kind, value)]
    masked = mask_pii(text)
    assert masked == text.replace(value, f"[{kind.value}]", 1)
    assert value not in masked


def test_masking_replaces_every_finding_with_its_kind() -> None:
    text = (
        "Jane (jane@example.org, 415-555-0132) paid with 4111 1111 1111 1111; "
        "SSN 123-45-6789, from 10.1.2.3."
    )
    assert mask_pii(text) == (
        "Jane ([EMAIL_ADDRESS], [PHONE_NUMBER]) paid with [CREDIT_CARD]; "
        "SSN [US_SSN], from [IP_ADDRESS]."
    )
    assert mask_token(SSN) == "[US_SSN]"
    assert [f.kind for f in find_pii(text)] == [EMAIL, PHONE, CARD, SSN, IP]


@pytest.mark.parametrize(
    "text",
    [
        "in 2024 we sold 1500 units for $19.99",
        "Order #123456789 shipped on 2024-05-17 at 10:30.",
        "order number 123-456-7890 (an order, not a phone: no area code starts with 1)",
        "The total was 1,234,567.89 and 98.6% of 3000 users agreed.",
        "Call 555-0132 (seven digits are not enough)",
        "ISBN 978-3-16-148410-0 and ZIP 94105-1234",
        "+5 points, +100 500 votes",
        "pi is 3.14159265358979",
        "tracking 1Z999AA10123456784",
    ],
)
def test_ordinary_numbers_are_not_pii(text: str) -> None:
    assert find_pii(text) == []
    assert mask_pii(text) == text


@pytest.mark.parametrize(
    ("ssn", "valid"),
    [
        ("123-45-6789", True),
        ("123 45 6789", True),
        ("078-05-1120", True),
        ("000-12-3456", False),  # area 000
        ("666-12-3456", False),  # area 666
        ("900-12-3456", False),  # areas 900-999
        ("999-12-3456", False),
        ("123-00-4567", False),  # group 00
        ("123-45-0000", False),  # serial 0000
        ("123-45 6789", False),  # mixed separators
        ("123456789", False),  # no structure
        ("1123-45-6789", False),  # part of a longer number
        ("123-45-67890", False),
        ("12-123-45-6789", False),
    ],
)
def test_ssn_validity(ssn: str, valid: bool) -> None:
    found = _found(f"ssn: {ssn} ok")
    assert (found == [(SSN, ssn)]) is valid, found


def test_ssns_in_a_list_are_each_found() -> None:
    text = "123-45-6789 234-56-7890, 345-67-8901"
    assert [v for _, v in _found(text)] == ["123-45-6789", "234-56-7890", "345-67-8901"]


@pytest.mark.parametrize(
    ("card", "valid"),
    [
        ("4111 1111 1111 1111", True),
        ("4111 1111 1111 1112", False),  # fails Luhn
        ("4111-1111-1111-1111", True),
        ("4111-1111-1111-1112", False),
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("5500 0000 0000 0004", True),
        ("3782 822463 10005", True),
        ("4111 1111-1111 1111", False),  # mixed separators
        ("4111  1111  1111  1111", False),  # double spaces
        ("0000 0000 0000 0000", False),  # passes Luhn, not a card
        ("411111111111", False),  # 12 digits
    ],
)
def test_card_validity(card: str, valid: bool) -> None:
    found = _found(f"card {card} thanks")
    assert (found == [(CARD, card)]) is valid, found


def test_card_digits_must_not_be_part_of_a_longer_run() -> None:
    assert (CARD, "4111111111111111") not in _found("id 94111111111111111 x")
    assert find_pii("ref 41111111111111110000000") == []
    assert find_pii("x4111111111111111") == []  # glued to a word


def test_a_grouped_card_followed_by_more_digits_is_cut_back() -> None:
    assert _found("card 4111 1111 1111 1111 123 (cvv)") == [(CARD, "4111 1111 1111 1111")]
    assert _found("card 4111 1111 1111 1111 1234 5678") == [(CARD, "4111 1111 1111 1111")]


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    "text",
    [
        "upgrade to 1.2.3 today",
        "version v1.2.3.4 released",
        "release 1.2.3.4.5",
        "Chrome/120.0.6099.109",
        "Python 3.11.4",
        "octet out of range 256.1.1.1",
        "leading zeros 010.001.001.001",
        "meet at 12:30",
        "at 12:30:45 sharp",
        "ratio 1:2:3",
        "MAC 00:1A:2B:3C:4D:5E",
        "std::vector<int> and a :: b",
        "score 10:00:00:00 final",
    ],
)
def test_versions_times_and_scopes_are_not_ip_addresses(text: str) -> None:
    assert find_pii(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "user@localhost is local",  # no TLD
        "a@b.c",  # one-letter TLD
        "x@y@example.com",  # not a single address
        "@example.com",
        "john@example.com-",  # a domain cannot end in "-"
    ],
)
def test_not_email_addresses(text: str) -> None:
    assert find_pii(text) == []


def test_email_local_part_and_length_limits() -> None:
    assert find_pii("a" * 65 + "@example.com") == []
    assert _found("a" * 64 + "@example.com") == [(EMAIL, "a" * 64 + "@example.com")]
    longest = "x" * 64 + "@" + ".".join(["d" * 61] * 3) + ".com"
    assert len(longest) == 254  # RFC 5321's limit, and the detector's
    assert _found(f"to {longest}.") == [(EMAIL, longest)]
    assert find_pii(f"to {longest}m.") == []  # 255 characters: not an address


def test_overlaps_are_resolved_earliest_then_longest() -> None:
    # Digits inside an e-mail's local part: the address starts first and wins.
    text = "write 4111111111111111@example.com"
    assert _found(text) == [(EMAIL, "4111111111111111@example.com")]
    # Same start: the longest; then PiiKind order.
    candidates = [
        PiiFinding(IP, 5, 10),
        PiiFinding(PHONE, 0, 8),
        PiiFinding(CARD, 0, 12),
        PiiFinding(SSN, 12, 20),
        PiiFinding(IP, 12, 20),
        PiiFinding(EMAIL, 11, 13),
    ]
    assert resolve(candidates) == [PiiFinding(CARD, 0, 12), PiiFinding(SSN, 12, 20)]
    assert resolve(reversed(candidates)) == resolve(candidates)
    assert resolve(candidates, start=1) == [PiiFinding(IP, 5, 10), PiiFinding(EMAIL, 11, 13)]


def test_a_detection_depends_only_on_a_bounded_window() -> None:
    """What `pii_candidates` finds at a start is decided by the PII_HORIZON characters from
    it: cutting the text later never changes it (what the stream guard relies on)."""
    rng = random.Random(11)
    pieces = [
        "jane.doe@example.org", "(415) 555-0132", "+44 20 7946 0958", "123-45-6789",
        "4111 1111 1111 1111", "4111 1111 1111 1111 123", "10.0.0.1", "2001:db8::1",
        " ", " ", ", ", ".", "-", ":", "@", "1", "12", "x", "foo", "\n", "+", "(",
    ]  # fmt: skip
    for _ in range(60):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(50, 160)))
        whole = pii_candidates(text)
        for cut in range(PII_HORIZON, len(text), 7):
            decided = [c for c in pii_candidates(text[:cut]) if c.start + PII_HORIZON <= cut]
            assert decided == [c for c in whole if c.start + PII_HORIZON <= cut]
            lo = rng.randrange(cut)
            window = pii_candidates(text, lo, cut)
            assert window == [c for c in whole if lo <= c.start < cut]


# ---- PII: linear time on adversarial input ------------------------------------------------

N = 100_000
_ADVERSARIAL = {
    "local part then @": "a" * N + "@",
    "local part then @ then label": "a" * N + "@" + "b" * N,
    "@ chain": "a@" * (N // 2),
    "dotted labels": "x@" + "a." * (N // 2),
    "hyphen labels": "x@" + "a-" * (N // 2),
    "digits": "1" * N,
    "digit dots": "1." * (N // 2),
    "octet dots": "123." * (N // 4),
    "digit colons": "1:" * (N // 2),
    "hex colons": "abcd:" * (N // 5),
    "colons": ":" * N,
    "plus ones": "+1 " * (N // 3),
    "parens": "(" * N,
    "area codes": "(415) " * (N // 6),
    "digit dashes": "1-" * (N // 2),
    "digit spaces": "1 " * (N // 2),
    "card groups": "4111 " * (N // 5),
    "card dash groups": "4111-" * (N // 5),
    "ssn prefixes": "123-45-" * (N // 7),
    "punctuation soup": "x 9x 9x 9.-: @+()" * (N // 17),
    "real values": "jane@example.org 415-555-0132 10.0.0.1 4111 1111 1111 1111 " * (N // 62),
}


@pytest.mark.parametrize("name", list(_ADVERSARIAL))
def test_pii_scan_is_linear_on_adversarial_text(name: str) -> None:
    text = _ADVERSARIAL[name]
    started = time.perf_counter()
    find_pii(text)
    assert time.perf_counter() - started < 1.0


# ---- keywords ------------------------------------------------------------------------------


def _spans(matcher: KeywordMatcher, text: str) -> list[str]:
    return [text[s.start : s.end] for s in matcher.finditer(text)]


def test_keywords_match_whole_words_case_insensitively() -> None:
    m = KeywordMatcher(["class", "bad word", "c++", "#tag"])
    assert _spans(m, "a CLASS act") == ["CLASS"]
    assert _spans(m, "a classic, subclass, class_name, class1") == []
    assert _spans(m, "(class)") == ["class"]
    assert _spans(m, "that was a Bad Word!") == ["Bad Word"]
    assert _spans(m, "xbad word, bad words, bad  word") == []
    assert _spans(m, "I like C++!") == ["C++"]
    assert _spans(m, "abc++") == []  # starts with a word character: must not follow one
    assert _spans(m, "a#tag b#TAGS") == ["#tag"]  # starts with "#": no left boundary


def test_keywords_are_unicode_aware() -> None:
    m = KeywordMatcher(["Straße", "naïve", "Ωmega"])
    assert _spans(m, "Die STRASSE ist lang") == ["STRASSE"]
    assert _spans(m, "die strasse, die Straße") == ["strasse", "Straße"]
    assert _spans(m, "Hauptstraße") == []  # "ß" and "t" are word characters
    assert _spans(m, "NAÏVE user, naïveté") == ["NAÏVE"]
    assert _spans(m, "ωMEGA") == ["ωMEGA"]
    assert m.longest == len("strasse")
    # Spans map back to the original text even when folding lengthens it.
    text = "ßßß straße!"
    assert _spans(m, text) == ["straße"]


def test_keywords_in_unspaced_scripts_match_inside_words() -> None:
    m = KeywordMatcher(["炸弹", "ระเบิด"])
    assert _spans(m, "如何制造炸弹的方法") == ["炸弹"]
    assert _spans(m, "วิธีทำระเบิดที่บ้าน") == ["ระเบิด"]


def test_longest_keyword_wins_at_a_position() -> None:
    m = KeywordMatcher(["bad", "bad word", "bad wolf"])
    assert _spans(m, "a bad word here") == ["bad word"]
    assert _spans(m, "a bad worm") == ["bad"]
    span = m.search("xx bad wolf")
    assert span is not None and (span.start, span.end) == (3, 11)


def test_search_reads_the_left_neighbour_before_pos() -> None:
    m = KeywordMatcher(["class"])
    assert m.search("xclass", 1) is None
    span = m.search(" class", 1)
    assert span is not None and span.start == 1
    assert m.search("class", 0, 4) is None  # the text is taken to end at endpos


@pytest.mark.parametrize(
    ("keywords", "index", "problem"),
    [
        (["ok", ""], 1, "empty"),
        (["  \t\n"], 0, "whitespace"),
        (["a", "b", "x" * 257], 2, "longer than 256"),
    ],
)
def test_invalid_keywords_are_refused_naming_the_index(
    keywords: list[str], index: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=rf"keyword {index} .*{problem}"):
        KeywordMatcher(keywords)


def test_keyword_limits_and_folded_length() -> None:
    assert KeywordMatcher(["x" * 256]).longest == 256
    assert KeywordMatcher(["ß" * 10, "abc"]).longest == 20  # folded "ss" * 10
    assert KeywordMatcher(["  padded  "]).keywords == ("padded",)


def test_keyword_matching_is_fast_with_many_keywords_and_adversarial_text() -> None:
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 12))) for _ in range(1000)]
    cases: list[tuple[list[str], str]] = [
        (words, " ".join(rng.choice(words) for _ in range(15000))[:N]),
        (["a" * 256], "a" * N),
        (["a" * k + "!" for k in range(1, 256)], "a" * N),
        (["-" * k + "x" for k in range(1, 100)], "-" * N),
        (["!" * 256, "ab" * 128], "!" * N + "ab" * N),
        (["ß" * 256], "ß" * N),
    ]
    for keywords, text in cases:
        matcher = KeywordMatcher(keywords)
        started = time.perf_counter()
        sum(1 for _ in matcher.finditer(text))
        assert time.perf_counter() - started < 1.0, keywords[:2]


# ---- Guard: one direction's verdict -------------------------------------------------------


@pytest.mark.parametrize(
    "parameters",
    [
        None,
        GuardrailParameters(),
        GuardrailParameters(pii=PiiSettings(behavior=PiiBehavior.NONE), invalid_keywords=[]),
        GuardrailParameters(pii=PiiSettings()),
        GuardrailParameters(safety=True, valid_topics=["cooking"]),  # not applied here
    ],
)
def test_an_unconfigured_guard_changes_nothing(parameters: GuardrailParameters | None) -> None:
    guard = Guard(parameters)
    text = "jane@example.org 123-45-6789 class"
    assert not guard.active
    assert guard.check(text) == Guard(None).check(text)
    verdict = guard.check(text)
    assert (verdict.blocked, verdict.reasons, verdict.text, verdict.hits) == (False, (), text, ())


def test_keywords_block_and_never_name_the_keyword() -> None:
    guard = _guard(keywords=["Forbidden Phrase", "secret"])
    verdict = guard.check("this has a forbidden phrase and a SECRET and another secret")
    assert verdict.blocked
    assert verdict.reasons == (HitKind.INVALID_KEYWORD,)
    assert verdict.hits == (Hit(HitKind.INVALID_KEYWORD, Action.BLOCK),) * 3
    shown = repr((verdict.reasons, verdict.hits)).casefold()
    assert "forbidden" not in shown and "secret" not in shown
    assert not guard.check("a secretary's secrets").blocked


def test_pii_block() -> None:
    guard = _guard(PiiBehavior.BLOCK)
    text = "mail jane@example.org or call 415-555-0132"
    verdict = guard.check(text)
    assert verdict.blocked
    assert verdict.reasons == (HitKind.EMAIL_ADDRESS, HitKind.PHONE_NUMBER)
    assert verdict.hits == (
        Hit(HitKind.EMAIL_ADDRESS, Action.BLOCK),
        Hit(HitKind.PHONE_NUMBER, Action.BLOCK),
    )
    assert verdict.text == text
    assert "jane" not in repr(verdict.reasons) + repr(verdict.hits)
    assert guard.check("nothing personal") == guard.check("nothing personal")
    assert not guard.check("nothing personal").blocked


def test_pii_mask() -> None:
    guard = _guard(PiiBehavior.MASK)
    verdict = guard.check("SSN 123-45-6789, card 4111 1111 1111 1111, ssn 234-56-7890")
    assert not verdict.blocked
    assert verdict.text == "SSN [US_SSN], card [CREDIT_CARD], ssn [US_SSN]"
    assert verdict.reasons == (HitKind.US_SSN, HitKind.CREDIT_CARD)
    assert [h.action for h in verdict.hits] == [Action.MASK] * 3
    assert [h.kind for h in verdict.hits] == [HitKind.US_SSN, HitKind.CREDIT_CARD, HitKind.US_SSN]
    clean = guard.check("no pii here")
    assert (clean.blocked, clean.reasons, clean.text, clean.hits) == (False, (), "no pii here", ())


def test_keyword_block_with_pii_mask() -> None:
    verdict = _guard(PiiBehavior.MASK, ["banned"]).check("jane@example.org said banned")
    assert verdict.blocked
    assert verdict.reasons == (HitKind.INVALID_KEYWORD,)  # what blocked, not what was masked
    assert verdict.text == "[EMAIL_ADDRESS] said banned"
    assert verdict.hits == (
        Hit(HitKind.EMAIL_ADDRESS, Action.MASK),
        Hit(HitKind.INVALID_KEYWORD, Action.BLOCK),
    )


def test_guards_per_direction_from_the_gateway_config() -> None:
    gateway = AiGatewayConfig(
        guardrails=Guardrails(
            input=GuardrailParameters(invalid_keywords=["password"]),
            output=GuardrailParameters(pii=PiiSettings(behavior=PiiBehavior.MASK)),
        )
    )
    assert Guard.for_input(gateway).check("my password").blocked
    assert not Guard.for_input(gateway).check("jane@example.org").blocked
    assert Guard.for_output(gateway).check("jane@example.org").text == "[EMAIL_ADDRESS]"
    assert not Guard.for_output(gateway).check("my password").blocked
    assert not Guard.for_input(None).active and not Guard.for_output(AiGatewayConfig()).active


def test_hit_kinds_name_the_pii_kinds() -> None:
    assert {k.value for k in PiiKind} < {k.value for k in HitKind}
    assert all(HitKind.of(k).value == k.value for k in PiiKind)


def test_guard_refuses_invalid_keywords() -> None:
    with pytest.raises(ValueError, match="keyword 1"):
        _guard(keywords=["fine", "   "])


# ---- StreamGuard: the invariant, property-style --------------------------------------------

_VALUES = {
    EMAIL: ["jane.doe@example.org", "ops+alerts@corp.example.co.uk"],
    PHONE: ["(415) 555-0132", "+44 20 7946 0958", "415-555-0199"],
    SSN: ["123-45-6789", "234 56 7890"],
    CARD: ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    IP: ["192.168.10.42", "2001:db8::8a2e:370:7334", "::1"],
}
_ALL_VALUES = [v for values in _VALUES.values() for v in values]
_KEYWORD = "Forbidden Word"  # never part of the filler, so any release of it is a leak
_FILLER = (
    "The quick brown fox jumps over the lazy dog; in 2024 we sold 1500 units for $19.99 "
    "(order 123-456-7890, version 1.2.3, at 12:30). Classic prose, nothing to hide here. "
    # Near misses that only the left neighbour rules out: a stream that lost it would flag.
    "A subclass of x4111111111111111, v10.0.0.1, x@jane@example.org and 9-876-54-3210. "
)


def _texts() -> list[str]:
    rng = random.Random(20240517)
    filler = _FILLER * 4  # longer than W, so holding back matters
    texts = []
    for value in _ALL_VALUES:
        texts.append(value)  # the whole stream
        texts.append(f"{value} {filler}")  # at the start
        texts.append(f"{filler}{value}")  # at the very end
        cut = rng.randrange(len(filler))
        texts.append(f"{filler[:cut]} {value}, {filler[cut:]}")  # in the middle
    for _ in range(12):  # several values and keywords at random places
        parts = [filler[: rng.randrange(40, 400)]]
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice([*_ALL_VALUES, _KEYWORD, _KEYWORD.upper()]))
            parts.append(filler[: rng.randrange(1, 300)].replace("Classic", "class"))
        texts.append(" ".join(parts))
    for value in _ALL_VALUES:
        texts.append(f"{_FILLER}{value}. {_KEYWORD.lower()} {_FILLER}")
        texts.append(f"{_FILLER}{_KEYWORD} then {value}")
    texts.append(_KEYWORD)
    texts.append("")
    return texts


def _chunkings(text: str, rng: random.Random) -> list[list[str]]:
    def split(sizes: Callable[[], int]) -> list[str]:
        pieces, i = [], 0
        while i < len(text):
            n = sizes()
            pieces.append(text[i : i + n])
            i += n
        return pieces

    return [
        list(text),  # one character at a time
        split(lambda: rng.randint(1, 4)),  # token-sized
        split(lambda: rng.randint(1, 40)),
        split(lambda: rng.choice([1, 1, 2, 7, 64, 255, 256, 257, 600])),
        split(lambda: rng.randint(100, 1200)),
        [text],
    ]


def _stream(guard: Guard, pieces: Sequence[str]) -> list[Release]:
    stream = StreamGuard(guard)
    releases = [stream.feed(piece) for piece in pieces]
    releases.append(stream.finish())
    return releases


def _raw_length(released: str, findings: Sequence[PiiFinding]) -> int:
    """How much of the original text a masked prefix stands for (failing if it ends inside
    a mask token)."""
    raw = masked = 0
    for finding in findings:
        gap = finding.start - raw
        if masked + gap >= len(released):
            break
        masked, raw = masked + gap, finding.start
        token = mask_token(finding.kind)
        assert masked + len(token) <= len(released), "a release ends inside a mask token"
        masked, raw = masked + len(token), finding.end
    return raw + len(released) - masked


_CONFIGS = {
    "mask": (PiiBehavior.MASK, None),
    "block": (PiiBehavior.BLOCK, None),
    "keywords": (None, [_KEYWORD, "class"]),
    "mask+keywords": (PiiBehavior.MASK, [_KEYWORD]),
    "block+keywords": (PiiBehavior.BLOCK, [_KEYWORD]),
}


@pytest.mark.parametrize("config", list(_CONFIGS))
def test_stream_releases_what_the_whole_text_check_gives(config: str) -> None:
    behavior, keywords = _CONFIGS[config]
    guard = _guard(behavior, keywords)
    matcher = guard.keywords
    rng = random.Random(config)
    for text in _texts():
        verdict = guard.check(text)
        findings = guard.findings(text)
        blocked_at: list[int] = []
        if matcher is not None and (span := matcher.search(text)) is not None:
            blocked_at.append(span.start)
        if behavior is PiiBehavior.BLOCK and findings:
            blocked_at.append(findings[0].start)
        assert verdict.blocked == bool(blocked_at)
        for pieces in _chunkings(text, rng):
            releases = _stream(guard, pieces)
            released = "".join(r.text for r in releases)
            context = (config, text[:60], [len(p) for p in pieces][:10])
            assert any(r.blocked for r in releases) == verdict.blocked, context
            for shown in [*(r.text for r in releases), released]:  # nothing caught leaves
                if matcher is not None:
                    assert _KEYWORD.casefold() not in shown.casefold(), context
                if behavior is not None:
                    assert not any(v in shown for v in _ALL_VALUES), context
            if not verdict.blocked:
                assert released == verdict.text, context
                assert [h for r in releases for h in r.hits] == list(verdict.hits), context
                continue
            assert verdict.text.startswith(released), context
            assert _raw_length(released, findings if behavior is PiiBehavior.MASK else []) <= min(
                blocked_at
            ), context
            first = next(i for i, r in enumerate(releases) if r.blocked)
            assert releases[first].reasons and set(releases[first].reasons) <= set(verdict.reasons)
            for later in releases[first + 1 :]:
                assert later.text == "" and later.blocked and later.hits == (), context


def test_stream_holds_back_exactly_w_characters() -> None:
    text = _FILLER * 10
    for guard, w in [
        (_guard(PiiBehavior.MASK), 255),
        (_guard(PiiBehavior.BLOCK), 255),
        (_guard(keywords=["abc", "x" * 40]), 40),
        (_guard(keywords=["ß" * 30]), 60),
        (_guard(PiiBehavior.MASK, ["x" * 256]), 256),
        (Guard(None), 0),
    ]:
        stream = StreamGuard(guard)
        assert stream.holdback == w
        released = 0
        for i, ch in enumerate(text, start=1):
            released += len(stream.feed(ch).text)
            assert released == max(0, i - w)
            assert stream.held == i - released
        assert released + len(stream.finish().text) == len(text)
        assert stream.held == 0


def test_stream_holds_a_masked_value_whole_until_it_is_decided() -> None:
    guard = _guard(PiiBehavior.MASK, ["secret"])
    stream = StreamGuard(guard)
    head = "x" * 300 + " jane@example.org"  # the address is at [301, 317)
    out = stream.feed(head).text
    assert out == "x" * (len(head) - 255)
    # 307 is decided: the address starts before it but ends after it, so it waits, whole.
    more = " and" + " " * (307 + 255 - len(head) - 4)
    out += stream.feed(more).text
    assert out == "x" * 300 + " " and stream.held == len(head + more) - 301
    tail = " then some more text" + " " * 300
    out += stream.feed(tail).text
    assert out.startswith("x" * 300 + " [EMAIL_ADDRESS] and")
    out += stream.finish().text
    assert out == guard.check(head + more + tail).text


def test_stream_block_then_nothing() -> None:
    stream = StreamGuard(_guard(PiiBehavior.BLOCK))
    first = stream.feed("hello " * 60 + "my ssn is 123-45-6789 " + "z" * 300)
    assert first.blocked and first.reasons == (HitKind.US_SSN,)
    assert first.text == "hello " * 60 + "my ssn is "
    assert first.hits == (Hit(HitKind.US_SSN, Action.BLOCK),)
    assert stream.blocked and stream.held == 0
    assert stream.feed("more") == Release(blocked=True, reasons=(HitKind.US_SSN,))
    assert stream.finish() == Release(blocked=True, reasons=(HitKind.US_SSN,))


def test_stream_keyword_straddling_pieces_is_blocked() -> None:
    guard = _guard(keywords=["drop table"])
    releases = _stream(guard, ["please DR", "OP TA", "BLE users"])
    assert "".join(r.text for r in releases) == "please "
    assert [r.text for r in releases] == ["", "plea", "se ", ""]
    assert [r.blocked for r in releases] == [False, False, True, True]
    assert releases[-1].reasons == (HitKind.INVALID_KEYWORD,)


def test_stream_does_not_block_on_a_keyword_that_a_longer_word_begins_with() -> None:
    """Whether a keyword ends a word is known only from the character after it: a stream
    must not decide before it has seen that character, whatever the pieces."""
    guard = _guard(keywords=["Straße", "forbidden"])
    text = "die Straßenbahn is forbiddenly fast, STRASSENBAHN too"
    assert not guard.check(text).blocked
    rng = random.Random(5)
    for pieces in _chunkings(text, rng):
        releases = _stream(guard, pieces)
        assert not any(r.blocked for r in releases)
        assert "".join(r.text for r in releases) == text


def test_stream_keyword_inside_a_masked_value_cuts_before_the_value() -> None:
    """A keyword inside a value that MASK would mask still blocks, and the release stops
    before the value: neither a part of it nor its mask token goes out."""
    guard = _guard(PiiBehavior.MASK, ["example"])
    text = "x" * 300 + " mail jane@example.org " + "y" * 300
    verdict = guard.check(text)
    assert verdict.blocked and verdict.reasons == (HitKind.INVALID_KEYWORD,)
    for pieces in _chunkings(text, random.Random(9)):
        releases = _stream(guard, pieces)
        assert "".join(r.text for r in releases) == "x" * 300 + " mail "
        assert any(r.blocked for r in releases)


def test_inactive_stream_passes_text_through() -> None:
    stream = StreamGuard(Guard(None))
    assert stream.feed("jane@example.org") == Release("jane@example.org")
    assert stream.finish() == Release()
    with pytest.raises(RuntimeError):
        stream.feed("late")


def test_stream_work_per_feed_is_bounded() -> None:
    """Feeding a long stream costs time proportional to its length (the window scanned per
    feed stays within W plus the piece plus a held value), not to its square."""
    guard = _guard(PiiBehavior.MASK, ["forbidden"])
    unit = _FILLER + "mail jane@example.org, call 415-555-0132. "

    def run(n: int) -> float:
        stream = StreamGuard(guard)
        text = unit * n
        started = time.perf_counter()
        for i in range(0, len(text), 4):
            stream.feed(text[i : i + 4])
            assert stream.held <= stream.holdback + 4 + 254
        stream.finish()
        return time.perf_counter() - started

    small, large = run(20), run(80)
    assert large < 1.5 and large < small * 8  # 4x the text: ~4x the time, never ~16x


@pytest.mark.parametrize("name", ["local part then @", "digits", "digit dots", "card groups"])
def test_stream_on_adversarial_text(name: str) -> None:
    text = _ADVERSARIAL[name]
    guard = _guard(PiiBehavior.MASK, ["a" * 200])
    started = time.perf_counter()
    released = "".join(
        r.text for r in _stream(guard, [text[i : i + 512] for i in range(0, N, 512)])
    )
    assert time.perf_counter() - started < 2.0
    assert released == guard.check(text).text


# -- the guard model's setting ---------------------------------------------------------------
def test_the_guard_model_is_a_shared_chat_endpoint(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tests.control_plane.conftest import make_settings

    url = f"sqlite:///{tmp_path / 'db'}"
    for name in ("databricks-nowhere", "databricks-dbrx-tiny-embeddings"):
        with pytest.raises(ValidationError, match="no shared chat endpoint"):
            make_settings(url, tmp_path, gateway={"guard_model_endpoint": name})
    chosen = make_settings(url, tmp_path, gateway={"guard_model_endpoint": "databricks-dbrx-tiny"})
    assert chosen.gateway.guard_model_endpoint == "databricks-dbrx-tiny"


def test_guardrails_a_guard_model_judges_are_refused_only_without_one() -> None:
    judged = GuardrailParameters(safety=True, valid_topics=["billing"])
    assert "needs a guard model" in (judged.problem("guardrails.input", guard_model=False) or "")
    assert judged.problem("guardrails.input", guard_model=True) is None
    blank = GuardrailParameters(valid_topics=[" "])
    assert "non-blank" in (blank.problem("guardrails.output", guard_model=True) or "")
