"""The REST service (``hrlm serve``): FastAPI app factory, routes, auth, micro-batching, metrics.

Modules: ``app`` (``create_app``, middleware, error handlers), ``routes``, ``schemas``, ``auth``
(tokens, roles, rate limits), ``batching`` (micro-batcher), ``recorder`` (prediction records),
``serving`` (model sources and the swap seam), ``core`` (the Service), ``metrics``, ``settings``.
The library never imports this package.
"""

from __future__ import annotations

from hrlm._extras import needs_extras

with needs_extras("the REST service (hrlm.service)"):
    from hrlm.service.app import create_app
    from hrlm.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
