"""A property-based fuzz of the API from its own OpenAPI schema (schemathesis): no input gets a 500.

schemathesis' pytest plugin (``@schema.parametrize``) does not run under pytest 9 here, so the test
draws cases from the schema's Hypothesis strategies itself: valid bodies (positive) and bodies that
break the schema (negative), on every operation, with and without a valid token.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from hrlm.service import ServiceSettings, create_app
from tests.service.conftest import add_users, bearer

OPEN = {"/healthz", "/readyz"}
FAKE = "hrlm_0123456789ab_" + "x" * 43


def test_no_input_gets_a_500(trained_model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hrlm.db'}"
    admin = add_users(url).admin
    app = create_app(
        ServiceSettings(model=str(trained_model), database_url=url, max_texts=8, max_text_chars=400, rate_limit=0)
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=bearer(admin))
    predict = schema["/v1/predict"]["POST"]
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        # the route that reaches the model gets its own share, however many routes the service grows
        predict.as_strategy(GenerationMode.POSITIVE),
        predict.as_strategy(GenerationMode.NEGATIVE),
    )
    seen: set[tuple[str, int]] = set()

    @given(case=cases, authorized=st.booleans())
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    def check(case: Any, authorized: bool) -> None:
        response = case.call(headers=bearer(admin if authorized else FAKE))
        seen.add((case.path, response.status_code))
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if not authorized and case.path not in OPEN:
            # no request without a valid token gets further than the token check
            assert response.status_code == 401, (case.path, response.status_code, response.text)

    try:
        check()
    finally:
        from schemathesis.python import asgi

        with contextlib.suppress(Exception):
            asgi.shutdown_lifespans()  # stop the service before its temporary folder goes
    # the fuzz reached the model, not only the token check and the validation errors (which test_limits covers)
    assert ("/v1/predict", 200) in seen, sorted(seen)
    assert len({path for path, _ in seen}) >= 15, sorted(seen)  # and most operations, not a few
