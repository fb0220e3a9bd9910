"""The counterfactual probe: swap gendered words in each text and see whether the prediction changes.

A model that routes "She asked about her parental leave" differently from "He asked about his
parental leave" treats the two genders differently, whatever its training data said. The probe
rewrites every text with :func:`swap_gender` and counts how often the predicted label changes,
overall and per original label, and how far the probability of the positive label moves.

The word list
-------------
The list below is this project's own, written for HR text; it copies no data set. It has:

- pronouns in every case form: he/she, him/her, his/her/hers, himself/herself;
- titles and forms of address: Mr/Ms, Mrs -> Mr, Miss -> Mr, sir/madam, ma'am -> sir;
- role and kinship nouns, singular and plural: man/woman, boy/girl, gentleman/lady, husband/wife,
  father/mother, dad/mom, son/daughter, brother/sister, uncle/aunt, nephew/niece, grandfather/
  grandmother, boyfriend/girlfriend, fiancé/fiancée (unaccented), king/queen, chairman/chairwoman,
  spokesman/spokeswoman, salesman/saleswoman, businessman/businesswoman, and the HR pair
  paternity/maternity; male/female, masculine/feminine;
- 50 first names a side (:data:`NAME_PAIRS`), common given names in English-speaking countries,
  paired one to one so that a swap is its own inverse. Names that are also ordinary words
  (Will, Mark, Grace, Hope, Joy, ...) are left out, and a name is swapped only when it is
  capitalised, so "mark the form" stays as it is.

Choices a reader should know:

- **"her" is two words in English**: the object pronoun (-> "him") and the possessive
  determiner (-> "his"). :func:`swap_gender` reads the next word: "her" before a noun phrase is
  possessive ("her manager" -> "his manager"); before punctuation, the end of the text, or a word
  of :data:`OBJECT_FOLLOWERS` (prepositions, conjunctions, articles, adverbs such as "to", "and",
  "the", "today") it is the object ("told her the news" -> "told him the news"). "his" is read the
  same way: "his" before a noun -> "her", standing alone -> "hers". The rule is wrong on some
  sentences ("gave her books" reads as possessive); the probe measures a rate over many texts,
  where such misreadings are rare and change the grammar, not the gender.
- "Mr" becomes "Ms", the title that does not state marital status; "Mrs" and "Miss" become "Mr".
- Case is kept word by word (``HE`` -> ``SHE``, ``He`` -> ``She``), and so is everything around a
  word: punctuation, possessive ``'s``, the period of ``Mr.``.
- Gender-neutral words (they, person, parent, partner, spouse) are not touched, and nothing is
  swapped to or from non-binary forms: the probe tests the binary contrast the regulations
  name, not every dimension of gender.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from hrlm.fairness.predictions import model_outputs

__all__ = [
    "NAME_PAIRS",
    "OBJECT_FOLLOWERS",
    "WORD_PAIRS",
    "counterfactual_probe",
    "swap_gender",
]

# (male, female): each swaps to the other
WORD_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"),
    ("him", "her"),  # "her" is resolved by the next word, see the module docstring
    ("his", "hers"),  # "his" too
    ("himself", "herself"),
    ("mr", "ms"),
    ("sir", "madam"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("boys", "girls"),
    ("gentleman", "lady"),
    ("gentlemen", "ladies"),
    ("husband", "wife"),
    ("husbands", "wives"),
    ("father", "mother"),
    ("fathers", "mothers"),
    ("dad", "mom"),
    ("dads", "moms"),
    ("son", "daughter"),
    ("sons", "daughters"),
    ("brother", "sister"),
    ("brothers", "sisters"),
    ("uncle", "aunt"),
    ("uncles", "aunts"),
    ("nephew", "niece"),
    ("nephews", "nieces"),
    ("grandfather", "grandmother"),
    ("grandson", "granddaughter"),
    ("boyfriend", "girlfriend"),
    ("boyfriends", "girlfriends"),
    ("fiance", "fiancee"),
    ("king", "queen"),
    ("chairman", "chairwoman"),
    ("chairmen", "chairwomen"),
    ("spokesman", "spokeswoman"),
    ("salesman", "saleswoman"),
    ("salesmen", "saleswomen"),
    ("businessman", "businesswoman"),
    ("businessmen", "businesswomen"),
    ("paternity", "maternity"),
    ("male", "female"),
    ("males", "females"),
    ("masculine", "feminine"),
)

# one-way: the female form maps to a male one that already maps back to another female form
ONE_WAY: dict[str, str] = {"mrs": "mr", "miss": "mr", "ma'am": "sir", "mum": "dad", "mums": "dads"}

# (male, female) first names, written for this project; none is also a common English word
NAME_PAIRS: tuple[tuple[str, str], ...] = (
    ("James", "Mary"),
    ("John", "Patricia"),
    ("Robert", "Jennifer"),
    ("Michael", "Linda"),
    ("David", "Elizabeth"),
    ("William", "Barbara"),
    ("Richard", "Susan"),
    ("Joseph", "Jessica"),
    ("Thomas", "Sarah"),
    ("Charles", "Karen"),
    ("Christopher", "Lisa"),
    ("Daniel", "Nancy"),
    ("Matthew", "Margaret"),
    ("Anthony", "Sandra"),
    ("Steven", "Ashley"),
    ("Paul", "Kimberly"),
    ("Andrew", "Emily"),
    ("Joshua", "Donna"),
    ("Kenneth", "Michelle"),
    ("Kevin", "Carol"),
    ("Brian", "Amanda"),
    ("George", "Melissa"),
    ("Timothy", "Deborah"),
    ("Ronald", "Stephanie"),
    ("Jason", "Rebecca"),
    ("Edward", "Sharon"),
    ("Jeffrey", "Laura"),
    ("Ryan", "Cynthia"),
    ("Jacob", "Kathleen"),
    ("Gary", "Amy"),
    ("Nicholas", "Angela"),
    ("Eric", "Shirley"),
    ("Jonathan", "Anna"),
    ("Stephen", "Brenda"),
    ("Larry", "Pamela"),
    ("Justin", "Emma"),
    ("Scott", "Nicole"),
    ("Brandon", "Helen"),
    ("Benjamin", "Samantha"),
    ("Samuel", "Katherine"),
    ("Gregory", "Christine"),
    ("Alexander", "Debra"),
    ("Patrick", "Rachel"),
    ("Dennis", "Carolyn"),
    ("Tyler", "Janet"),
    ("Aaron", "Catherine"),
    ("Adam", "Maria"),
    ("Nathan", "Heather"),
    ("Henry", "Diane"),
    ("Peter", "Julie"),
)

# words after which "her" is the object pronoun and "his" stands alone ("hers")
OBJECT_FOLLOWERS = frozenset(
    {
        "a",
        "an",
        "the",
        "to",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "that",
        "this",
        "these",
        "those",
        "if",
        "when",
        "while",
        "because",
        "as",
        "than",
        "then",
        "since",
        "about",
        "above",
        "across",
        "after",
        "against",
        "along",
        "among",
        "around",
        "at",
        "before",
        "behind",
        "below",
        "beside",
        "between",
        "beyond",
        "by",
        "down",
        "during",
        "except",
        "for",
        "from",
        "in",
        "inside",
        "into",
        "near",
        "of",
        "off",
        "on",
        "onto",
        "out",
        "outside",
        "over",
        "past",
        "through",
        "throughout",
        "till",
        "toward",
        "towards",
        "under",
        "until",
        "up",
        "upon",
        "with",
        "within",
        "without",
        "again",
        "also",
        "already",
        "anyway",
        "back",
        "today",
        "tomorrow",
        "yesterday",
        "now",
        "too",
        "very",
        "well",
        "soon",
        "later",
        "here",
        "there",
        "once",
        "twice",
        "away",
        "home",
        "first",
        "last",
        "directly",
        "personally",
    }
)

_SWAPS: dict[str, str] = {**{m: f for m, f in WORD_PAIRS}, **{f: m for m, f in WORD_PAIRS}, **ONE_WAY}
_NAMES: dict[str, str] = {**{m: f for m, f in NAME_PAIRS}, **{f: m for m, f in NAME_PAIRS}}
_NAMES_LOWER = {k.lower(): v for k, v in _NAMES.items()}
_WORDS = sorted(set(_SWAPS) | set(_NAMES_LOWER), key=len, reverse=True)
_PATTERN = re.compile(r"(?<![\w'])(" + "|".join(re.escape(w) for w in _WORDS) + r")(?![\w])", re.IGNORECASE)
_NEXT_WORD = re.compile(r"\s*([A-Za-z]+)")

EXAMPLES = 5  # flipped texts shown
EXAMPLE_CHARS = 200  # characters of each shown text


def _case_like(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower()


def _stands_alone(text: str, end: int) -> bool:
    """Whether the word ending at ``end`` is followed by no noun: punctuation, the end, or an object follower."""
    match = _NEXT_WORD.match(text, end)
    if match is None:
        return True
    return match.group(1).lower() in OBJECT_FOLLOWERS


def swap_gender(text: str) -> tuple[str, int]:
    """Swap every gendered word of the project's word list for its counterpart, keeping case and punctuation.

    Args:
        text: any text.

    Returns:
        The rewritten text and the number of words swapped (0: the text is unchanged).

    Example:
        >>> swap_gender("Mr. Smith said she would email her manager, and John's wife agreed.")
        ("Ms. Smith said he would email his manager, and Patricia's husband agreed.", 5)
        >>> swap_gender("I told her.")
        ('I told him.', 1)
    """
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        word = match.group(0)
        low = word.lower()
        if low in _NAMES_LOWER and low not in _SWAPS:
            if not word[:1].isupper():
                return word  # a name is swapped only when capitalised
            count += 1
            return _case_like(_NAMES_LOWER[low], word)
        if low == "her":
            new = "him" if _stands_alone(text, match.end()) else "his"
        elif low == "his":
            new = "hers" if _stands_alone(text, match.end()) else "her"
        else:
            new = _SWAPS[low]
        count += 1
        return _case_like(new, word)

    out = _PATTERN.sub(replace, text)
    return out, count


def counterfactual_probe(
    predictor: Any, texts: Sequence[str], *, positive: str | None = None, examples: int = EXAMPLES
) -> dict[str, Any]:
    """How often the model's prediction changes when the gendered words of a text are swapped.

    Only texts with at least one swap are scored (twice: as written and swapped).

    Args:
        predictor: a :class:`hrlm.inference.Predictor` (or anything with its ``tasks`` and
            ``predict_proba``); the first task is probed.
        texts: the texts to probe.
        positive: the label whose probability change is reported (default: the first label).
        examples: how many flipped texts to show (each cut to 200 characters).

    Returns:
        ``texts``, ``swapped`` (texts with a swap), ``swaps`` (words swapped), ``flipped``,
        ``flip_rate`` (flipped / swapped, ``None`` when nothing was swapped), ``per_label``
        (original predicted label -> ``n``, ``flipped``, ``flip_rate``), ``positive``,
        ``mean_positive_change`` and ``mean_abs_positive_change`` (of the positive label's
        probability, swapped minus original) and ``examples``.

    Example:
        >>> counterfactual_probe(Predictor.from_dir("runs/cv"), texts, positive="yes")["flip_rate"]  # doctest: +SKIP
        0.013
    """
    pairs = [(i, *swap_gender(t)) for i, t in enumerate(texts)]
    pairs = [(i, new, n) for i, new, n in pairs if n > 0]
    originals = [texts[i] for i, _, _ in pairs]
    swapped = [new for _, new, _ in pairs]
    before = model_outputs(predictor, originals, positive)
    after = model_outputs(predictor, swapped, positive)
    changed = [_as_key(a) != _as_key(b) for a, b in zip(before.labels, after.labels, strict=True)]
    per_label: dict[str, dict[str, Any]] = {}
    for label, flip in zip(before.labels, changed, strict=True):
        row = per_label.setdefault(_as_key(label), {"n": 0, "flipped": 0})
        row["n"] += 1
        row["flipped"] += int(flip)
    for row in per_label.values():
        row["flip_rate"] = round(row["flipped"] / row["n"], 6)
    delta = after.scores - before.scores
    shown = [
        {
            "text": originals[k][:EXAMPLE_CHARS],
            "counterfactual": swapped[k][:EXAMPLE_CHARS],
            "label": _as_key(before.labels[k]),
            "counterfactual_label": _as_key(after.labels[k]),
            "positive_change": round(float(delta[k]), 6),
        }
        for k in np.flatnonzero(changed)[:examples]
    ]
    n = len(pairs)
    return {
        "texts": len(texts),
        "swapped": n,
        "swaps": int(sum(c for _, _, c in pairs)),
        "flipped": int(sum(changed)),
        "flip_rate": round(sum(changed) / n, 6) if n else None,
        "per_label": dict(sorted(per_label.items())),
        "positive": before.positive,
        "mean_positive_change": round(float(delta.mean()), 6) if n else None,
        "mean_abs_positive_change": round(float(np.abs(delta).mean()), 6) if n else None,
        "examples": shown,
    }


def _as_key(label: Any) -> str:
    return "|".join(label) if isinstance(label, list | tuple) else str(label)
