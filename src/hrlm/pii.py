"""PII redaction: every pattern hrlm removes from stored text, in one place.

The service stores each prediction's text after :func:`redact` (or a :class:`Redactor` with the
site's own patterns, the ``pii_patterns`` setting). ARCHITECTURE.md lists redaction under
``text.py``; it lives in its own module so that the patterns, their order and their tests sit
together. What is found and what it becomes::

    email addresses            jane.doe@acme.co.uk              -> [EMAIL]
    URLs                       https://intranet/x?id=3, www.x    -> [URL]
    IBANs (mod-97 checked)     GB82 WEST 1234 5698 7654 32       -> [IBAN]
    dates of birth             born on 3 March 1990, DOB: 03/03/1990 -> born on [DATE_OF_BIRTH], ...
    employee ids               employee ID was E33016, staff no. 4512, EMP-004512 -> [EMPLOYEE_ID]
    payroll ids                payroll number: P-99812, PAY-20417 -> [PAYROLL_ID]
    payment card numbers       4111 1111 1111 1111 (Luhn)       -> [CARD]
    national ID numbers        US SSN 123-45-6789,               -> [NATIONAL_ID]
                               UK NI AB 12 34 56 C
    phone numbers              +44 20 7946 0958, (555) 123-4567 -> [PHONE]

Patterns a :class:`Redactor` is given run first, then these in that order, so a number inside an
email or URL is not also read as a phone number and a date of birth is not read as one either.

- An **IBAN** is two letters, two check digits and 11 to 30 more letters or digits (15 to 34 in
  all, grouped by spaces or not); it is replaced only when its mod-97 checksum is right.
- A **date of birth** is a date (15/03/1990, 1990-03-15, 3 March 1990, March 3rd, 1990, March
  1990) at most three short words after "born", "DOB", "D.O.B.", "date of birth", "birth date" or
  "birthday"; the word stays, the date goes. Other dates stay, and so does a year alone.
- An **employee or payroll id** is the token (with a digit, 3 to 24 characters) after a keyword:
  "employee id/no/number/#", "emp id/no", "staff id/no/number", "personnel id/no/number",
  "payroll id/no/number/ref", optionally followed by ":", "is" or "was". Without a keyword only
  shapes that are never words or years are taken: ``E`` and 5 to 8 digits (``E33016``), and
  ``EMP``/``EMPL`` or ``PAY`` with 4 to 10 digits (``EMP-004512``, ``PAY20417``).
- Card numbers are replaced only when their digits pass the Luhn check, and a run of digits that
  looks like an ISO date (2024-01-15) is never taken for a phone number. Redaction is deliberately
  greedy for phone-like numbers (8 to 15 digits): a stored text loses an order number rather than
  keep a phone number.

Names, postal addresses and free-text descriptions of a person are **not** found: redacted text is
not anonymised text.

Example:
    >>> redact("Mail jane@acme.com or call +1 (555) 123-4567 about card 4111-1111-1111-1111")
    'Mail [EMAIL] or call [PHONE] about card [CARD]'
    >>> redact("My employee ID was E33016, born on 3 March 1990")
    'My employee ID was [EMPLOYEE_ID], born on [DATE_OF_BIRTH]'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hrlm.errors import ConfigError

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")  # digits in groups split by single spaces or hyphens
US_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}[- ](?!00)\d{2}[- ](?!0000)\d{4}(?![\d-])")
UK_NI = re.compile(r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", re.I)
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w])")
# two letters, two check digits, then 11 to 30 letters or digits, spaced or not; each character
# takes at most one space before it, so a long word costs linear time, not a search of groupings
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", re.IGNORECASE)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE = (
    r"(?:\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2})"  # 15/03/1990, 15.03.90, 03-15-1990
    r"|\d{4}[./-]\d{1,2}[./-]\d{1,2}"  # 1990-03-15
    rf"|(?:the\s+)?{_DAY}(?:\s+of)?\s+{_MONTH},?\s+\d{{4}}"  # 3 March 1990, the 3rd of March, 1990
    rf"|{_MONTH}\s+{_DAY},?\s+\d{{4}}"  # March 3rd, 1990
    rf"|{_MONTH},?\s+\d{{4}})"  # March 1990
)
DATE_OF_BIRTH = re.compile(
    r"\b(?P<key>born|d\.?o\.?b\b\.?|date\s+of\s+birth|birth\s*date|birthday)"
    r"(?P<gap>[\s:=,(-]*(?:(?:on|is|was|in|of|:)\b[\s:=,(-]*){0,3})"
    rf"(?P<value>{_DATE})(?![\w/.-]\d)",
    re.IGNORECASE,
)

_ID_SUFFIX = r"[\s_-]*(?:id\b|no\b\.?|num(?:ber)?\b|#|code\b|ref(?:erence)?\b)(?:\s*(?:no\b\.?|num(?:ber)?\b|#))?"
_ID_GAP = r"(?P<gap>(?:\s*(?:[:#=]|\bis\b|\bwas\b))*\s*)"
_ID_VALUE = r"(?P<value>[A-Za-z0-9](?:[A-Za-z0-9/-]{0,22}[A-Za-z0-9])?)(?![\w/-])"
EMPLOYEE_ID = re.compile(
    rf"\b(?P<key>(?:employee(?:'s)?|emp\.?|staff|personnel|worker){_ID_SUFFIX}){_ID_GAP}{_ID_VALUE}", re.IGNORECASE
)
PAYROLL_ID = re.compile(rf"\b(?P<key>payroll{_ID_SUFFIX}){_ID_GAP}{_ID_VALUE}", re.IGNORECASE)
# shapes that are never an ordinary word or a year: E33016, EMP-004512, EMPL_1234, PAY-20417
EMPLOYEE_ID_SHAPE = re.compile(r"(?<![\w/-])(?:E-?\d{5,8}|(?:EMPL?|Empl?|empl?)[-_]?\d{4,10})(?![\w/-])")
PAYROLL_ID_SHAPE = re.compile(r"(?<![\w/-])(?:PAY|Pay|pay)[-_]?\d{4,10}(?![\w/-])")

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_URL_TAIL = ".,;:!?)]}'\""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum that payment card numbers carry.

    Example:
        >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
        (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 2 and total % 10 == 0


_DOUBLED = tuple(d * 2 - 9 if d > 4 else d * 2 for d in range(10))


def iban_ok(iban: str) -> bool:
    """Whether ``iban`` (spaces allowed) has an IBAN's shape, 15 to 34 characters, and a right mod-97 check.

    Example:
        >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
        (True, False)
    """
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact[:2].isalpha() and compact[2:4].isdigit() and compact.isalnum()):
        return False
    if not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _url(m: re.Match[str]) -> str:
    text = m.group(0)
    stripped = text.rstrip(_URL_TAIL)
    return "[URL]" + text[len(stripped) :]


def _iban(m: re.Match[str]) -> str:
    """The longest prefix of whole groups that is a valid IBAN becomes [IBAN]; words after it stay."""
    text = m.group(0)
    ends = [len(text)] + [i for i in range(len(text) - 1, 0, -1) if text[i] == " "]
    for end in ends:
        if iban_ok(text[:end]):
            return "[IBAN]" + text[end:]
    return text


def _cards(m: re.Match[str]) -> str:
    """Every span of whole digit groups of 13 to 19 digits that passes Luhn becomes [CARD].

    Spans are tried longest first from each group on, so a card number right after a phone
    number or an order number (one run of digit groups) is still found.
    """
    parts = re.split(r"([ -])", m.group(0))
    groups, seps = parts[0::2], parts[1::2]
    out: list[str] = []
    i = 0
    while i < len(groups):
        # Luhn doubles every second digit from the right: keep the sum both ways (doubling the even
        # or the odd positions from the left) and read the one the span's length calls for, so each
        # longer span costs its new digits only, not a fresh checksum ("1 " * 20,000, the text of
        # test_long_digit_runs_stay_fast: 2.6 s before, 0.6 s after, on a busy 2-core machine)
        end, n, found = i, 0, 0
        sums = [0, 0]  # doubling positions 0, 2, 4, ... / doubling positions 1, 3, 5, ...
        while end < len(groups) and n + len(groups[end]) <= 19:
            for ch in groups[end]:
                d = int(ch)
                sums[n % 2] += _DOUBLED[d]
                sums[1 - n % 2] += d
                n += 1
            end += 1
            if n >= 13 and sums[n % 2] % 10 == 0:
                found = end
        if found:
            out.append("[CARD]")
            i = found
        else:
            out.append(groups[i])
            i += 1
        if i < len(groups):
            out.append(seps[i - 1])
    return "".join(out)


def _phone(m: re.Match[str]) -> str:
    text = m.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if not 8 <= digits <= 15 or _ISO_DATE.fullmatch(text):
        return text
    return "[PHONE]"


def _keyed(tag: str, *, min_len: int = 1) -> Callable[[re.Match[str]], str]:
    """Keep the keyword and what joins it to the value; the value becomes ``tag`` if it has a digit."""

    def replace(m: re.Match[str]) -> str:
        value = m.group("value")
        if len(value) < min_len or not any(ch.isdigit() for ch in value):
            return m.group(0)
        return m.group("key") + m.group("gap") + tag

    return replace


@dataclass(frozen=True)
class Rule:
    """One kind of PII: its name, its pattern and what a match becomes."""

    kind: str
    pattern: re.Pattern[str]
    replace: str | Callable[[re.Match[str]], str]


RULES: tuple[Rule, ...] = (
    Rule("email", EMAIL, "[EMAIL]"),
    Rule("url", URL, _url),
    Rule("iban", IBAN, _iban),
    Rule("date_of_birth", DATE_OF_BIRTH, _keyed("[DATE_OF_BIRTH]")),
    Rule("payroll_id", PAYROLL_ID, _keyed("[PAYROLL_ID]", min_len=3)),
    Rule("employee_id", EMPLOYEE_ID, _keyed("[EMPLOYEE_ID]", min_len=3)),
    Rule("payroll_id", PAYROLL_ID_SHAPE, "[PAYROLL_ID]"),
    Rule("employee_id", EMPLOYEE_ID_SHAPE, "[EMPLOYEE_ID]"),
    Rule("card", DIGIT_RUN, _cards),
    Rule("national_id", US_SSN, "[NATIONAL_ID]"),
    Rule("national_id", UK_NI, "[NATIONAL_ID]"),
    Rule("phone", PHONE, _phone),
)
BUILTIN_KINDS: tuple[str, ...] = tuple(dict.fromkeys(rule.kind for rule in RULES))


def _tag(tag: str) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        return tag if m.group(0) else ""  # a pattern that can match nothing must not sprinkle tags

    return replace


def compile_patterns(patterns: Mapping[str, str]) -> tuple[Rule, ...]:
    """Rules for a site's own patterns, ``{name: regex}``; each match becomes ``[NAME]``.

    Raises:
        ConfigError: naming the pattern, when its name is not lower-case letters, digits and
            ``_``, is a built-in kind, or its regex does not compile or matches the empty text.

    Example:
        >>> [r.kind for r in compile_patterns({"badge": r"B-\\d{6}"})]
        ['badge']
    """
    rules = []
    for name, regex in patterns.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"PII pattern name {name!r} is not allowed: use lower-case letters, digits and _ "
                "(starting with a letter, at most 40), e.g. 'badge'."
            )
        if name in BUILTIN_KINDS:
            raise ConfigError(
                f"PII pattern {name!r} has the name of a built-in pattern ({', '.join(BUILTIN_KINDS)}), "
                "which always runs: choose another name."
            )
        if not isinstance(regex, str) or not regex:
            raise ConfigError(f"PII pattern {name!r} must be a non-empty regular expression, not {regex!r}.")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ConfigError(
                f"PII pattern {name!r} is not a valid regular expression ({exc}): fix {regex[:80]!r} or remove it."
            ) from None
        if pattern.fullmatch(""):
            raise ConfigError(f"PII pattern {name!r} matches the empty text ({regex[:80]!r}): make it match something.")
        rules.append(Rule(name, pattern, _tag(f"[{name.upper()}]")))
    return tuple(rules)


class Redactor:
    """Replaces the built-in kinds of PII and a site's own patterns by tags.

    Args:
        extra: the site's patterns, ``{name: regex}``; a match becomes ``[NAME]``. They run before
            the built-in ones, so a site's format wins over a generic one (a 10-digit badge
            number becomes ``[BADGE]``, not ``[PHONE]``).

    Raises:
        ConfigError: naming the pattern, when one is invalid (see :func:`compile_patterns`).

    Example:
        >>> Redactor(extra={"badge": r"B-\\d{6}"}).redact("badge B-123456, jo@acme.com")
        'badge [BADGE], [EMAIL]'
    """

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        self.extra = dict(extra or {})
        self.rules: tuple[Rule, ...] = compile_patterns(self.extra) + RULES

    def redact(self, text: str) -> str:
        """``text`` with every match of a configured or built-in pattern replaced by its tag."""
        for rule in self.rules:
            text = rule.pattern.sub(rule.replace, text)
        return text

    __call__ = redact


_BUILTIN = Redactor()


def redact(text: str) -> str:
    """``text`` with every built-in kind of PII (emails, URLs, IBANs, ids, cards, ...) replaced by a tag.

    Example:
        >>> redact("My NI number is AB 12 34 56 C, see https://hr.example.com/form.")
        'My NI number is [NATIONAL_ID], see [URL].'
    """
    return _BUILTIN.redact(text)
