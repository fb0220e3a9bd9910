"""The review loop's library: what reviewers are shown, what they answer, and what it measures.

Modules: ``answers`` (the review policy, next item, leases, submitted answers, labelled examples for
retraining), ``fill`` (sorting new predictions into the queue: low confidence, uncertainty sampling,
random share, near-duplicates), ``external`` (answers from other labelling tools: Label Studio),
``stats`` (queue statistics, reviewer agreement and kappa).
It needs the store (``pip install 'hrlm[serve]'``), not the service.
"""

from __future__ import annotations

from hrlm._extras import needs_extras

with needs_extras("the review loop (hrlm.review)"):
    from hrlm.review.answers import ReviewPolicy, fill_queue, labelled_examples
    from hrlm.review.external import EXTERNAL_REASON, record_external, withdraw_external

__all__ = ["EXTERNAL_REASON", "ReviewPolicy", "fill_queue", "labelled_examples", "record_external", "withdraw_external"]
