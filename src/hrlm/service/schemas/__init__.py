"""Request and response bodies, one module per area of :mod:`hrlm.service.routes`; ``predict`` holds the shared ones."""
