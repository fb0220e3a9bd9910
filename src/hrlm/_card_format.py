"""YAML and Markdown for model cards (:mod:`hrlm.model_card`), written without a YAML library.

YAML: block style, every string double-quoted with the characters YAML reads differently escaped
(control characters, line and paragraph separators, lone surrogates), so any label or name parses
back to itself. Markdown: text on one line for table cells and headings, ``|`` escaped in cells.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# -- YAML -------------------------------------------------------------------------------------------


def yaml_block(value: Any, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and scalars (strings always double-quoted), indented by ``indent``."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{yaml_block(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(item)}\n")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                body = yaml_block(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-\n{yaml_block(item, indent + 2)}")
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}\n")
    else:
        lines.append(f"{pad}{yaml_scalar(value)}\n")
    return "".join(lines)


def yaml_scalar(value: Any) -> str:
    r"""One YAML scalar: ``null``, a boolean, a number, or a double-quoted string that parses back to itself.

    Example:
        >>> print(yaml_scalar('say "hi"\x07'))
        "say \"hi\"\x07"
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if value == value and abs(value) != float("inf") else "null"
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    out = []
    for ch in str(value):
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif (
            code < 0x20
            or 0x7F <= code <= 0x9F
            or 0xD800 <= code <= 0xDFFF
            or code in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF)
        ):
            out.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# -- Markdown ---------------------------------------------------------------------------------------


def when(value: Any) -> str:
    """A timestamp to the second (``-`` for none)."""
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value or "-")


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (a bool is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any) -> str:
    """A metric as a table shows it: floats to 4 decimals, ``-`` for anything not a number.

    Example:
        >>> number(0.5), number(12), number(None)
        ('0.5000', '12', '-')
    """
    if not is_number(value):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def one_line(value: Any) -> str:
    """Text on one line: control characters and line breaks become spaces."""
    return CONTROL.sub(" ", str(value)).strip()


def paragraph(value: str) -> str:
    """Text a user wrote, its line breaks kept and other control characters made spaces."""
    lines = [CONTROL.sub(" ", line).rstrip() for line in value.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip()


def md_cell(value: str) -> str:
    """A Markdown table cell: one line, ``|`` and backslashes escaped, never empty."""
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|") or " "


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    r"""A Markdown table: its head, a rule, a row per item.

    Example:
        >>> print(md_table(("Label", "F1"), [("a|b", "0.9")]), end="")
        | Label | F1 |
        |---|---|
        | a\|b | 0.9 |
    """
    cols = len(head)
    top = "| " + " | ".join(md_cell(h) for h in head) + " |"
    rule = "|" + "|".join("---" for _ in range(cols)) + "|"
    body = ["| " + " | ".join(md_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join([top, rule, *body]) + "\n"
