"""PII redaction: every pattern hrlm removes from stored text, in one place.

The service stores each prediction's text after :func:`redact`. ARCHITECTURE.md lists redaction
under ``text.py``; it lives in its own module so that the patterns, their order and their tests sit
together. What is found and what it becomes::

    email addresses            jane.doe@acme.co.uk            -> [EMAIL]
    URLs                       https://intranet/x?id=3, www.x  -> [URL]
    payment card numbers       4111 1111 1111 1111 (Luhn)     -> [CARD]
    national ID numbers        US SSN 123-45-6789,             -> [NATIONAL_ID]
                               UK NI AB 12 34 56 C
    phone numbers              +44 20 7946 0958, (555) 123-4567 -> [PHONE]

Patterns run in that order, so a number inside an email or URL is not also read as a phone
number. Card numbers are replaced only when their digits pass the Luhn check, and a run of digits
that looks like an ISO date (2024-01-15) is never taken for a phone number. Redaction is
deliberately greedy for phone-like numbers (8 to 15 digits): a stored text loses an order number
rather than keep a phone number.

Example:
    >>> redact("Mail jane@acme.com or call +1 (555) 123-4567 about card 4111-1111-1111-1111")
    'Mail [EMAIL] or call [PHONE] about card [CARD]'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")  # digits in groups split by single spaces or hyphens
US_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}[- ](?!00)\d{2}[- ](?!0000)\d{4}(?![\d-])")
UK_NI = re.compile(r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", re.I)
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w])")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_URL_TAIL = ".,;:!?)]}'\""


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


def _url(m: re.Match[str]) -> str:
    text = m.group(0)
    stripped = text.rstrip(_URL_TAIL)
    return "[URL]" + text[len(stripped) :]


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
        end, digits, found = i, "", 0
        while end < len(groups) and len(digits) + len(groups[end]) <= 19:
            digits += groups[end]
            end += 1
            if len(digits) >= 13 and luhn_ok(digits):
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


@dataclass(frozen=True)
class Rule:
    """One kind of PII: its name, its pattern and what a match becomes."""

    kind: str
    pattern: re.Pattern[str]
    replace: str | Callable[[re.Match[str]], str]


RULES: tuple[Rule, ...] = (
    Rule("email", EMAIL, "[EMAIL]"),
    Rule("url", URL, _url),
    Rule("card", DIGIT_RUN, _cards),
    Rule("national_id", US_SSN, "[NATIONAL_ID]"),
    Rule("national_id", UK_NI, "[NATIONAL_ID]"),
    Rule("phone", PHONE, _phone),
)


def redact(text: str) -> str:
    """``text`` with every email, URL, card number, national ID and phone number replaced by a tag.

    Example:
        >>> redact("My NI number is AB 12 34 56 C, see https://hr.example.com/form.")
        'My NI number is [NATIONAL_ID], see [URL].'
    """
    for rule in RULES:
        text = rule.pattern.sub(rule.replace, text)
    return text
