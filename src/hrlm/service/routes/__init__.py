"""HTTP routes, one module per area: ``predict``, ``review``, ``registry``, ``jobs``, ``pages`` (HTML)."""
