"""PII redaction: every kind it removes, and the look-alikes it leaves alone."""

from __future__ import annotations

import pytest

from hrlm.pii import US_SSN, luhn_ok, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # emails
        ("mail jane.doe@acme.co.uk today", "mail [EMAIL] today"),
        ("J_Smith+hr@mail.example.org, thanks", "[EMAIL], thanks"),
        ("mailto:bob@x.org", "mailto:[EMAIL]"),
        # URLs, with trailing punctuation kept outside
        ("see https://intranet.acme.com/hr/form?id=3&x=y.", "see [URL]."),
        ("(www.acme.com/benefits)", "([URL])"),
        ("ftp://files.acme.com/payslip.pdf", "[URL]"),
        # phone numbers in common shapes
        ("call +44 20 7946 0958 now", "call [PHONE] now"),
        ("call (555) 123-4567", "call [PHONE]"),
        ("mobile 07700 900123", "mobile [PHONE]"),
        ("+49 30 901820", "[PHONE]"),
        ("ring 555.123.4567 or 555-123-4567", "ring [PHONE] or [PHONE]"),
        # US social security and UK national insurance numbers
        ("SSN 123-45-6789 please", "SSN [NATIONAL_ID] please"),
        ("ssn 123 45 6789", "ssn [NATIONAL_ID]"),
        ("NI number AB123456C", "NI number [NATIONAL_ID]"),
        ("ni ab 12 34 56 c.", "ni [NATIONAL_ID]."),
        # card numbers that pass the Luhn check, however they are spaced
        ("card 4111 1111 1111 1111 expired", "card [CARD] expired"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("amex 378282246310005", "amex [CARD]"),
        ("5555555555554444.", "[CARD]."),
        # several kinds in one text
        (
            "I'm Jo (jo@acme.com, +1 415 555 0134), SSN 078-05-1120, see www.acme.com",
            "I'm Jo ([EMAIL], [PHONE]), SSN [NATIONAL_ID], see [URL]",
        ),
    ],
)
def test_redacts(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "my salary is late",
        "meeting on 2024-01-15 at 10:30",  # an ISO date is not a phone number
        "employee id 12345, room 404",  # too few digits for a phone number
        "I worked 37.5 hours, paid 1,500.00 GBP",
        "card 4111 1111 1111 1112 fails Luhn",  # 16 digits but not a card number
        "see section 3.2.1 of the handbook",
        "user@localhost has no domain",
        "QQ 12 34 56 C",  # QQ is not a valid NI prefix
        "",
    ],
)
def test_leaves_look_alikes(text: str) -> None:
    assert redact(text) == text


def test_ssn_pattern_skips_numbers_never_issued() -> None:
    assert US_SSN.search("078-05-1120")
    for never in ("000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000"):
        assert US_SSN.search(never) is None, never


def test_a_card_right_after_other_digits_is_found() -> None:
    assert redact("ref 12 4111 1111 1111 1111") == "ref 12 [CARD]"
    assert redact("order 12-34, card 5555-5555-5555-4444") == "order 12-34, card [CARD]"


def test_long_digit_runs_stay_fast() -> None:
    import time

    text = "1 " * 20_000
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 2.0


def test_luhn() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert not luhn_ok("0")


def test_redaction_is_idempotent() -> None:
    text = "jo@acme.com +44 20 7946 0958 4111 1111 1111 1111 AB123456C https://x.org/a"
    once = redact(text)
    assert redact(once) == once
    assert once == "[EMAIL] [PHONE] [CARD] [NATIONAL_ID] [URL]"
