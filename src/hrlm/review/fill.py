"""Filling the review queue: which stored predictions people should check.

:func:`fill_queue` reads the stored predictions it has not read yet (a cursor row, ``review_fill``,
says how far it got) and queues some of them as review items:

* ``random``: a small slice of every prediction, chosen by a stable hash of its id, whatever the
  model said, so the reviewed sample measures the model without bias (no diversity rule here);
* ``low_confidence``: predictions whose confidence is below the policy's threshold;
* ``uncertainty``: of the others, the policy's share with the highest uncertainty (``1 - (p1 - p2)``
  or the normalised entropy; for multi-label, the label nearest its 0.5 decision).

Near-duplicates do not crowd the queue: a text whose normalised form equals that of an open item, or
whose word-bigram Jaccard similarity with one (of the newest ``window`` open items) reaches
``similarity``, is skipped. Predictions stored without text (``store_text = none``) cannot be
reviewed; they are counted in :func:`hrlm.review.answers.stats`. Whether an item is held out of retraining
and whether it needs two reviewers are stable hashes too (of its text and of its prediction id), so
a refill never changes them. Re-exported by :mod:`hrlm.review.answers`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
import re
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from hrlm.config import check_choice
from hrlm.errors import ConfigError
from hrlm.store.tables import predictions, review_fill, review_items, utcnow
from hrlm.text import has_visible, normalize

FILLER = "fill"
REASONS = ("random", "low_confidence", "uncertainty")
MAX_SHINGLE_WORDS = 300  # near-duplicate checks read at most this many words of a text
_PUNCT = re.compile(r"[^\w\s]+")


@dataclass(frozen=True)
class ReviewPolicy:
    """Which predictions enter the review queue, and how items are handed out.

    Args:
        confidence_below: predictions less confident than this are queued (``low_confidence``).
        uncertainty: ``margin`` or ``entropy``: how the other predictions are ranked.
        uncertain_fraction: share of the other predictions queued by uncertainty.
        random_fraction: share of all predictions queued at random.
        double_fraction: share of items that need two reviewers.
        holdout_fraction: share of items kept out of retraining.
        similarity: word-bigram Jaccard similarity at which two texts are near-duplicates.
        lease_s: how long an item shown to a reviewer stays theirs.
        settle_s: on PostgreSQL, predictions younger than this are left for the next fill (a
            transaction that took a lower id may still be committing); SQLite commits in id order.
        window: how many of the newest open items a new text is compared with.
    """

    confidence_below: float = 0.6
    uncertainty: str = "margin"
    uncertain_fraction: float = 0.1
    random_fraction: float = 0.02
    double_fraction: float = 0.1
    holdout_fraction: float = 0.2
    similarity: float = 0.8
    lease_s: float = 600.0
    settle_s: float = 2.0
    window: int = 2000

    def __post_init__(self) -> None:
        check_choice("review_uncertainty", self.uncertainty, ("margin", "entropy"))
        for name in ("confidence_below", "uncertain_fraction", "random_fraction", "double_fraction"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("holdout_fraction", self.holdout_fraction, 0.0, 1.0)
        if not 0.0 < self.similarity <= 1.0:
            raise ConfigError(f"review_similarity = {self.similarity!r}; choose a number in (0, 1].")
        if self.lease_s <= 0:
            raise ConfigError(f"review_lease_s = {self.lease_s!r}; choose a positive number of seconds.")
        if self.settle_s < 0 or self.window < 1:
            raise ConfigError(
                f"settle_s = {self.settle_s!r}, window = {self.window!r}; use settle_s >= 0 and window >= 1."
            )

    @classmethod
    def from_settings(cls, settings: Any) -> ReviewPolicy:
        """The policy of a :class:`hrlm.service.ServiceSettings` (its ``review_*`` settings)."""
        names = {f.name for f in fields(cls)}
        return cls(**{n: getattr(settings, f"review_{n}") for n in names if hasattr(settings, f"review_{n}")})


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"review_{name} = {value!r}; choose a number from {low:g} to {high:g}.")


# -- texts, hashes, uncertainty ------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return _PUNCT.sub(" ", normalize(text).casefold()).split()


def text_hash(text: str) -> str:
    """SHA-256 of a text's normalised form (case, punctuation and spacing ignored).

    Example:
        >>> text_hash("VPN  login fails!") == text_hash("vpn login fails")
        True
    """
    return hashlib.sha256(" ".join(_words(text)).encode("utf-8")).hexdigest()


def _shingles(text: str) -> frozenset[tuple[str, ...]]:
    words = _words(text)[:MAX_SHINGLE_WORDS]
    if len(words) < 2:
        return frozenset([tuple(words)])
    return frozenset(itertools.pairwise(words))


def similarity(a: str, b: str) -> float:
    """Word-pair Jaccard similarity of two texts, as the filler measures near-duplicates (0 to 1).

    Example:
        >>> round(similarity("my vpn login fails", "my vpn login fails again"), 2)
        0.75
    """
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y) if x or y else 1.0


def share(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def uncertainty(output: dict[str, Any], kind: str = "margin") -> float:
    """How unsure a prediction is, from 0 (sure) to 1, given its stored ``output``.

    Single-label: ``margin`` is ``1 - (p1 - p2)``, ``entropy`` the entropy over the labels divided
    by its maximum. Multi-label (``label`` is a list): each label is a yes/no decision at 0.5, and
    the most uncertain label counts (``1 - |2p - 1|``, or its binary entropy).

    Example:
        >>> round(uncertainty({"label": "a", "probabilities": {"a": 0.6, "b": 0.4}}), 2)
        0.8
    """
    probs = [float(p) for p in (output.get("probabilities") or {}).values()]
    if not probs:
        return 0.0
    if isinstance(output.get("label"), list):
        if kind == "entropy":
            return max(_binary_entropy(p) for p in probs)
        return max(1.0 - abs(2.0 * p - 1.0) for p in probs)
    if len(probs) == 1:
        return 0.0
    if kind == "entropy":
        h = -sum(p * math.log(p) for p in probs if p > 0)
        return min(1.0, h / math.log(len(probs)))
    top = sorted(probs, reverse=True)
    return min(1.0, max(0.0, 1.0 - (top[0] - top[1])))


def _binary_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


class _Neighbours:
    """The open items' texts, to find near-duplicates through an inverted index of word bigrams."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.hashes: set[str] = set()
        self.sizes: list[int] = []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def add(self, digest: str, shingles: frozenset[tuple[str, ...]]) -> None:
        self.hashes.add(digest)
        i = len(self.sizes)
        self.sizes.append(len(shingles))
        for s in shingles:
            self.index[s].append(i)

    def duplicate(self, digest: str, shingles: frozenset[tuple[str, ...]]) -> bool:
        if digest in self.hashes:
            return True
        overlap: dict[int, int] = defaultdict(int)
        for s in shingles:
            for i in self.index.get(s, ()):
                overlap[i] += 1
        n = len(shingles)
        return any(both / (n + self.sizes[i] - both) >= self.threshold for i, both in overlap.items())


# -- filling the queue ---------------------------------------------------------------------------


def fill_queue(engine: Engine, policy: ReviewPolicy, *, limit: int = 5000) -> dict[str, Any]:
    """Queue review items from the predictions stored since the last fill; return what it did.

    Reads at most ``limit`` predictions. Safe to run from several processes at once: the filler's
    cursor row is locked for the whole transaction, so the second filler waits and then reads on
    from where the first stopped; ``review_items.prediction_id`` is unique besides.

    Returns:
        ``scanned``, ``queued``, ``by_reason``, ``skipped_no_text``, ``skipped_duplicate``,
        ``last_prediction_id``.

    Example:
        >>> fill_queue(engine, ReviewPolicy(confidence_below=0.7))  # doctest: +SKIP
        {'scanned': 120, 'queued': 31, 'by_reason': {'random': 2, 'low_confidence': 20, ...}, ...}
    """
    if limit < 1:
        raise ConfigError(f"limit = {limit}; fill at least one prediction at a time.")
    now = utcnow()
    with engine.begin() as conn:
        state = _lock_cursor(conn, now)
        query = (
            select(
                predictions.c.id,
                predictions.c.text,
                predictions.c.model_version,
                predictions.c.label,
                predictions.c.confidence,
                predictions.c.output,
            )
            .where(predictions.c.id > state["last_prediction_id"])
            .order_by(predictions.c.id)
            .limit(limit)
        )
        if conn.dialect.name != "sqlite" and policy.settle_s > 0:
            query = query.where(predictions.c.created_at <= now - dt.timedelta(seconds=policy.settle_s))
        rows = list(conn.execute(query).all())
        result: dict[str, Any] = {
            "scanned": len(rows),
            "queued": 0,
            "by_reason": dict.fromkeys(REASONS, 0),
            "skipped_no_text": 0,
            "skipped_duplicate": 0,
            "last_prediction_id": state["last_prediction_id"],
        }
        if not rows:
            return result
        neighbours = _Neighbours(policy.similarity)
        open_items = conn.execute(
            select(review_items.c.text, review_items.c.text_hash)
            .where(review_items.c.state == "open")
            .order_by(review_items.c.id.desc())
            .limit(policy.window)
        ).all()
        for text, digest in open_items:
            neighbours.add(digest, _shingles(text))
        chosen, credit = _choose(rows, policy, neighbours, state["uncertain_credit"], result)
        if chosen:
            conn.execute(insert(review_items), [{**c, "created_at": now, "state": "open"} for c in chosen])
        result["queued"] = len(chosen)
        result["last_prediction_id"] = rows[-1].id
        conn.execute(
            update(review_fill)
            .where(review_fill.c.name == FILLER)
            .values(
                last_prediction_id=rows[-1].id,
                scanned=review_fill.c.scanned + len(rows),
                queued=review_fill.c.queued + len(chosen),
                skipped_no_text=review_fill.c.skipped_no_text + result["skipped_no_text"],
                skipped_duplicate=review_fill.c.skipped_duplicate + result["skipped_duplicate"],
                uncertain_credit=credit,
                updated_at=now,
            )
        )
    return result


def _lock_cursor(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    """Lock the filler's row (a write first: SQLite takes its write lock, PostgreSQL the row lock) and read it."""
    touched = conn.execute(update(review_fill).where(review_fill.c.name == FILLER).values(updated_at=now)).rowcount
    if not touched:  # the migration creates the row; this only runs on a database where it was deleted
        conn.execute(
            insert(review_fill).values(
                name=FILLER,
                last_prediction_id=0,
                scanned=0,
                queued=0,
                skipped_no_text=0,
                skipped_duplicate=0,
                uncertain_credit=0.0,
                updated_at=now,
            )
        )
    return dict(conn.execute(select(review_fill).where(review_fill.c.name == FILLER)).mappings().one())


def _choose(
    rows: list[Any], policy: ReviewPolicy, neighbours: _Neighbours, credit: float, result: dict[str, Any]
) -> tuple[list[dict[str, Any]], float]:
    """The review items among ``rows``, and the uncertainty credit left for the next fill."""
    chosen: list[dict[str, Any]] = []
    low: list[tuple[float, Any]] = []
    others: list[tuple[float, Any]] = []
    for row in rows:
        if row.text is None or not has_visible(row.text):  # nothing a reviewer could read
            result["skipped_no_text"] += 1
            continue
        u = uncertainty(row.output, policy.uncertainty)
        if share(f"random:{row.id}") < policy.random_fraction:
            chosen.append(_item(row, "random", 1.0, policy))  # unbiased: no diversity rule, served first
        elif row.confidence < policy.confidence_below:
            low.append((u, row))
        else:
            others.append((u, row))
    for item in chosen:
        neighbours.add(item["text_hash"], _shingles(item["text"]))

    def take(candidates: list[tuple[float, Any]], reason: str, most: int | None) -> None:
        taken = 0
        for u, row in sorted(candidates, key=lambda c: (-c[0], c[1].id)):
            if most is not None and taken >= most:
                return
            digest, shingles = text_hash(row.text), _shingles(row.text)
            if neighbours.duplicate(digest, shingles):
                result["skipped_duplicate"] += 1
                continue
            neighbours.add(digest, shingles)
            chosen.append(_item(row, reason, u, policy, digest))
            taken += 1

    take(low, "low_confidence", None)
    credit += policy.uncertain_fraction * len(others)
    k = math.floor(credit + 1e-9)
    take(others, "uncertainty", k)
    credit = max(0.0, credit - k)
    for item in chosen:
        result["by_reason"][item["reason"]] += 1
    return chosen, credit


def _item(row: Any, reason: str, score: float, policy: ReviewPolicy, digest: str | None = None) -> dict[str, Any]:
    digest = digest or text_hash(row.text)
    return {
        "prediction_id": row.id,
        "model_version": row.model_version,
        "text": row.text,
        "text_hash": digest,
        "suggestion": row.label,
        "output": row.output,
        "reason": reason,
        "score": round(float(score), 6),
        # identical texts land on the same side, so a holdout text is never also trained on
        "holdout": share(f"holdout:{digest}") < policy.holdout_fraction,
        "reviews_needed": 2 if share(f"double:{row.id}") < policy.double_fraction else 1,
    }
