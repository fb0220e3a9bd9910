"""PII redaction: every kind it removes, and the look-alikes it leaves alone."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from hrlm.errors import ConfigError
from hrlm.pii import US_SSN, Redactor, iban_ok, luhn_ok, redact


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
        # employee and payroll ids after a keyword: the keyword stays, the id goes
        ("employee ID was E33016", "employee ID was [EMPLOYEE_ID]"),
        ("my employee id: 12345, room 404", "my employee id: [EMPLOYEE_ID], room 404"),
        ("Employee No. 77-1234 here", "Employee No. [EMPLOYEE_ID] here"),
        ("employee's number is 4512.", "employee's number is [EMPLOYEE_ID]."),
        ("EmployeeID=E-12345", "EmployeeID=[EMPLOYEE_ID]"),
        ("emp id #4512", "emp id #[EMPLOYEE_ID]"),
        ("staff no. AB-1234 please", "staff no. [EMPLOYEE_ID] please"),
        ("personnel number is 00451", "personnel number is [EMPLOYEE_ID]"),
        ("payroll number: P-99812", "payroll number: [PAYROLL_ID]"),
        ("Payroll ID was 20417", "Payroll ID was [PAYROLL_ID]"),
        # employee and payroll ids whose shape alone says what they are
        ("E33016 asked about leave", "[EMPLOYEE_ID] asked about leave"),
        ("ids EMP-004512, EMP004512 and empl_1234", "ids [EMPLOYEE_ID], [EMPLOYEE_ID] and [EMPLOYEE_ID]"),
        ("PAY-20417 is missing", "[PAYROLL_ID] is missing"),
        # IBANs with a right mod-97 check, spaced or not; a word after one stays
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN [IBAN] please"),
        ("iban de89370400440532013000.", "iban [IBAN]."),
        ("to NL91 ABNA 0417 1643 00 THEN", "to [IBAN] THEN"),
        # dates of birth: the date after born / DOB / date of birth / birthday goes, the word stays
        ("born on 3 March 1990 in Leeds", "born on [DATE_OF_BIRTH] in Leeds"),
        ("I was born 15.03.1990", "I was born [DATE_OF_BIRTH]"),
        ("DOB: 15/03/1990", "DOB: [DATE_OF_BIRTH]"),
        ("d.o.b. 1990-03-15", "d.o.b. [DATE_OF_BIRTH]"),
        ("date of birth is March 3rd, 1990", "date of birth is [DATE_OF_BIRTH]"),
        ("birthday: the 3rd of March, 1990", "birthday: [DATE_OF_BIRTH]"),
        ("birth date 03-15-90", "birth date [DATE_OF_BIRTH]"),
        ("born in Sept 1990", "born in [DATE_OF_BIRTH]"),
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
        "room 404, extension 12345",  # too few digits for a phone number
        # ids: a keyword without an id, ids too short, words and years beside a keyword
        "employee no longer works here",
        "staff number was wrong",
        "employee id 12",
        "in 2019 the staff id changed",
        "my employee number changed on 2024-01-01",
        "E330 is a food additive",  # E and 3 digits: not an employee id
        "Ex12345 and AE12345 and E123456C",  # other letters around the digits
        "I paid 2024 and emptied 12345",
        # IBAN shapes whose checksum is wrong, and ordinary codes
        "GB82 WEST 1234 ABCD",
        "Version AB12 CDEF GHIJ",
        # dates that are not dates of birth, and a year alone
        "the meeting on 15/03/2024",
        "stubborn 15/03/1990",
        "born in 1990",
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


def linear_time(make: Callable[[int], str], n: int) -> None:
    """Redacting ``make(4n)`` costs about 4x ``make(n)``, not 16x: no pattern backtracks quadratically.

    A ratio of two timings taken together, not a wall-clock limit, so a loaded machine does not fail it.
    """

    def seconds(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            redact(text)
            best = min(best, time.perf_counter() - start)
        return best

    small, large = seconds(make(n)), seconds(make(4 * n))
    assert large < 8 * small + 0.05, (small, large)


def test_long_digit_runs_stay_fast() -> None:
    linear_time(lambda n: "1 " * n, 5_000)


def test_luhn() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert not luhn_ok("0")


def test_redaction_is_idempotent() -> None:
    text = (
        "jo@acme.com +44 20 7946 0958 4111 1111 1111 1111 AB123456C https://x.org/a E33016 PAY-20417 "
        "GB82WEST12345698765432 DOB 1990-03-15"
    )
    once = redact(text)
    assert redact(once) == once
    assert once == "[EMAIL] [PHONE] [CARD] [NATIONAL_ID] [URL] [EMPLOYEE_ID] [PAYROLL_ID] [IBAN] DOB [DATE_OF_BIRTH]"


def test_iban_checksum() -> None:
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82 WEST 1234 5698 7654 33")  # one digit changed
    assert not iban_ok("GB82 WEST 1234")  # too short
    assert not iban_ok("8282 WEST 1234 5698 7654 32")  # no country code
    assert redact("IBAN GB82 WEST 1234 5698 7654 33") != "IBAN [IBAN]"


@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda n: ("AB12" + "C" * 40 + " ") * n, 125),  # IBAN-like words too long to be one
        (lambda n: ("AB12 " + "C " * 30) * n, 75),  # IBAN-like single characters
        (lambda n: "employee id" + " " * n + "x", 5_000),
        (lambda n: "employee id is is : # " * n, 225),
        (lambda n: ("born on on in " + "3 " * 10) * n, 100),
    ],
    ids=["iban-words", "iban-chars", "id-spaces", "id-joiners", "dob-joiners"],
)
def test_hostile_texts_stay_fast(make: Callable[[int], str], n: int) -> None:
    linear_time(make, n)


def test_configured_patterns_run_before_the_built_in_ones() -> None:
    redactor = Redactor(extra={"badge": r"B-\d{6}", "case_ref": r"(?i)\bcase\s*\d{10}\b"})
    assert redactor.redact("badge B-123456, jo@acme.com") == "badge [BADGE], [EMAIL]"
    # ten digits would be a phone number; the site's own pattern names it first
    assert redactor("case 0123456789 and E33016") == "[CASE_REF] and [EMPLOYEE_ID]"
    assert redact("badge B-123456") == "badge B-123456"  # the module function knows only the built-in ones
    assert Redactor().redact("badge B-123456") == "badge B-123456"


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"badge": "B-(\\d{6}"}, "PII pattern 'badge' is not a valid regular expression"),
        ({"badge": "x*"}, "PII pattern 'badge' matches the empty text"),
        ({"badge": ""}, "PII pattern 'badge' must be a non-empty regular expression"),
        ({"Badge No": "B-\\d{6}"}, "PII pattern name 'Badge No' is not allowed"),
        ({"email": "x@y"}, "PII pattern 'email' has the name of a built-in pattern"),
    ],
)
def test_a_bad_configured_pattern_is_a_config_error_naming_it(patterns: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", "\\(")):
        Redactor(extra=patterns)


def test_a_configured_pattern_that_can_match_nothing_adds_no_tags() -> None:
    # passes the empty-text check (it needs a word boundary) but has zero-width matches in text
    assert Redactor(extra={"edge": r"\b(?:B-\d{6})?"}).redact("see B-123456 now") == "see [EDGE] now"
