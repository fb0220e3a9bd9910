"""Kept for jobs that hrlm 0.1 put on the Redis queue under this dotted path (``hrlm.jobs.rq_entry``).

RQ stores the function of a queued job by name; a worker of this version still runs those jobs.
New jobs name :func:`hrlm.lifecycle.jobs.rq_entry`. Nothing else imports this module.
"""

from __future__ import annotations

from hrlm.lifecycle.jobs import rq_entry

__all__ = ["rq_entry"]
