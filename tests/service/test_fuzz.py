"""A property-based fuzz of the API from its own OpenAPI schema (schemathesis): no input gets a 500.

schemathesis' pytest plugin (``@schema.parametrize``) does not run under pytest 9 here, so the test
draws cases from the schema's Hypothesis strategies itself: valid bodies (positive) and bodies that
break the schema (negative), on every operation, with and without a valid token. A share of the
cases then has its path parameters, query values and body strings swapped for hostile ones: NUL
bytes, control characters, 10,000-character names, path tricks and integers past 64 bits. A sweep
then sends each hostile value (lone surrogates too, as JSON escapes) in each parameter and body
field of each operation in turn. Both run on SQLite and on PostgreSQL (which refuses NUL and lone
surrogates in text).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from hrlm.service import ServiceSettings, create_app
from hrlm.service.served_model import folder_version
from tests.service.conftest import add_users, bearer, running

pytestmark = pytest.mark.hostile  # part of the hostile-input suite

OPEN = {"/healthz", "/readyz"}
FAKE = "hrlm_0123456789ab_" + "x" * 43
EXAMPLES = 300  # 10 to 45 s a database on 2 cores; the hostile share is what finds the 500s
# strings a URL can carry (a lone surrogate cannot be percent-encoded as UTF-8: it goes into JSON bodies only)
HOSTILE_IN_PATH = [
    "\x00",
    "a\x00b",
    "\x01\x1f\x7f",
    "a" * 300,
    "n" * 10_000,
    "..",
    "../../etc/passwd",
    "%00",
    "report.html\x00.png",
    "\u202e\u200b",
    " ",
    "9223372036854775808",
    "-1",
]
HOSTILE_IN_BODY = [*HOSTILE_IN_PATH, "\ud800", "a\udfffb", "\ud83d"]
HOSTILE_NUMBERS = [2**63, 2**64, -(2**63) - 1, 10**30, -1, 0]


def hostile_strings(where: list[str]) -> st.SearchStrategy[str]:
    # schemathesis sends what UTF-8 encodes: lone surrogates go through the sweep below, as JSON escapes
    return st.one_of(st.sampled_from(where), st.text(alphabet=st.characters(codec="utf-8"), max_size=50))


def hostile_value(where: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(hostile_strings(where), st.sampled_from(HOSTILE_NUMBERS))


@st.composite
def spoiled(draw: st.DrawFn, case: Any, known: dict[str, str]) -> Any:
    """``case`` with some of its path parameters, query values and body strings made hostile.

    A parameter named in ``known`` (the served version) takes its real value half the time, so
    that hostile values of the parameters after it get past the lookup of the first.
    """
    for name in list(case.path_parameters or {}):
        if name in known and draw(st.booleans()):
            case.path_parameters[name] = known[name]
        elif draw(st.booleans()):
            case.path_parameters[name] = draw(hostile_value(HOSTILE_IN_PATH))
    for name in list(case.query or {}):
        if draw(st.booleans()):
            case.query[name] = draw(hostile_value(HOSTILE_IN_PATH))
    if isinstance(case.body, dict):
        case.body = {key: _spoil(draw, value) for key, value in case.body.items()}
    return case


def _spoil(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool) and draw(st.booleans()):
        return draw(hostile_value(HOSTILE_IN_PATH))
    if isinstance(value, list):
        return [_spoil(draw, v) for v in value]
    return value


def test_no_input_gets_a_500(trained_model: Path, db_url: str) -> None:
    admin = add_users(db_url).admin
    app = create_app(
        ServiceSettings(
            model=str(trained_model),
            database_url=db_url,
            max_texts=8,
            max_text_chars=400,
            rate_limit=0,
            auth_fail_limit=0,  # half the cases carry a wrong token on purpose
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=bearer(admin))
    predict = schema["/v1/predict"]["POST"]
    review = schema["/v1/review/items/{item_id}"]["POST"]
    plain = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        # the route that reaches the model gets its own share, however many routes the service grows
        predict.as_strategy(GenerationMode.POSITIVE),
        predict.as_strategy(GenerationMode.NEGATIVE),
        review.as_strategy(GenerationMode.POSITIVE),
        # and plain texts, so that some cases surely get past validation (random strings often do not)
        st.builds(
            lambda text: predict.Case(body={"text": text}, media_type="application/json"),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=3, max_size=60).filter(str.strip),
        ),
    )
    known = {"version": folder_version(trained_model)}
    cases = st.one_of(plain, plain.flatmap(lambda case: spoiled(case, known)))
    seen: set[tuple[str, int]] = set()
    started = time.monotonic()

    @given(case=cases, authorized=st.booleans())
    # one valid text first, whatever the draws: the fuzz surely reaches the model and the store
    @example(case=predict.Case(body={"text": "my salary is late"}, media_type="application/json"), authorized=True)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )
    def check(case: Any, authorized: bool) -> None:
        response = case.call(headers=bearer(admin if authorized else FAKE))
        seen.add((case.path, response.status_code))
        where = (case.method, case.path, repr(case.path_parameters)[:200], repr(case.query)[:200])
        # some answers are binary (the review export as Parquet): read every body leniently
        text = response.content.decode("utf-8", errors="replace")
        assert response.status_code < 500, (*where, repr(case.body)[:300], text[:500])
        if not authorized and case.path not in OPEN:
            # no request without a valid token gets further than the token check
            assert response.status_code == 401, (*where, response.status_code, text[:300])
        # no answer quotes a long input back, nor a server path
        assert "n" * 41 not in text and str(trained_model) not in text, (*where, text[:300])

    try:
        check()
    finally:
        from schemathesis.python import asgi

        with contextlib.suppress(Exception):
            asgi.shutdown_lifespans()  # stop the service before its temporary folder goes
    # the fuzz reached the model, not only the token check and the validation errors (which test_limits covers)
    assert ("/v1/predict", 200) in seen, sorted(s for s in seen if s[0] == "/v1/predict")
    assert len({path for path, _ in seen}) >= 15, sorted(seen)  # and most operations, not a few
    assert time.monotonic() - started < 60, "the fuzz should stay under a minute a database"


# a body each operation accepts; the sweep spoils one field at a time (a new operation with a body must be added)
BODIES = {
    ("post", "/v1/predict"): {"text": "my salary is late", "texts": None},
    ("post", "/v1/review/items/{item_id}"): {"action": "flag", "label": "it", "labels": ["it"], "note": "why"},
    ("post", "/v1/models/{version}/promote"): {"reason": "gate passed", "force": False},
    ("post", "/v1/models/rollback"): {"reason": "worse"},
    ("post", "/v1/retrain"): {"base": "v1", "margin": 0.01},
    ("post", "/v1/alerts/{alert_id}/resolve"): {"note": "a known campaign"},
    ("post", "/v1/audit"): {"group_cols": ["sex"], "positive": "payroll", "rows": [{"text": "tax", "sex": "F"}]},
    ("post", "/v1/review/items/{item_id}/reopen"): {"reason": "check again"},
    ("post", "/v1/review/bulk"): {"item_ids": [1, 2], "label": "it", "labels": None},
    ("post", "/v1/review/items/{item_id}/adjudicate"): {"label": "it", "note": "the VPN is IT's"},
    ("put", "/v1/review/guidelines/{label}"): {"description": "Pay and payslips", "examples": ["my payslip"]},
    # Label Studio's requests (hrlm.service.routes.labelstudio)
    ("post", "/labelstudio/setup"): {"project": "1.1700000000", "schema": "<View/>"},
    ("post", "/labelstudio/predict"): {"tasks": [{"id": 1, "data": {"text": "tax"}}], "label_config": "<View/>"},
    ("post", "/labelstudio/webhook"): {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": {}},
    ("post", "/labelstudio/train"): {"project": "1.1700000000"},
}


def test_no_hostile_value_in_any_parameter_or_field_gets_a_500(trained_model: Path, db_url: str) -> None:
    """Every parameter and body field of every operation, each hostile value in turn (the fuzz draws at random)."""
    from urllib.parse import quote

    admin = add_users(db_url).admin
    version = folder_version(trained_model)
    base = {
        "version": version,
        "item_id": "1",
        "job_id": "x",
        "name": "metrics.json",
        "alert_id": "1",
        "label": "payroll",
        "other": version,
    }
    limits = {"rate_limit": 0, "auth_fail_limit": 0, "max_texts": 8, "max_text_chars": 400}
    with running(trained_model, db_url, **limits) as client:
        spec = client.get("/openapi.json", headers=bearer(admin)).json()
        sent = 0

        def call(method: str, template: str, path: dict[str, Any], query: dict[str, Any], body: Any) -> None:
            nonlocal sent
            url = template.format(**{k: quote(str(v), safe="") for k, v in path.items()})
            content = None if body is None else json.dumps(body).encode()  # \ud800 as an escape, as JSON allows
            headers = {**bearer(admin), "Content-Type": "application/json"}
            r = client.request(method, url, params=query, content=content, headers=headers)
            sent += 1
            where = (method, template, repr(path)[:120], repr(query)[:120], repr(body)[:200])
            assert r.status_code < 500, (*where, r.text[:300])
            assert "n" * 41 not in r.text and str(trained_model) not in r.text, (*where, r.text[:300])

        for template, methods in spec["paths"].items():
            for method, op in methods.items():
                params = op.get("parameters", [])
                path = {p["name"]: base[p["name"]] for p in params if p["in"] == "path"}
                query = {p["name"]: 1 for p in params if p["in"] == "query"}
                body = None
                if "requestBody" in op:
                    assert (method, template) in BODIES, f"add a body of {method.upper()} {template} to BODIES"
                    body = {k: v for k, v in BODIES[method, template].items() if v is not None}
                for where, values in (("path", path), ("query", query)):
                    for name in values:
                        for bad in [*HOSTILE_IN_PATH, *HOSTILE_NUMBERS]:
                            spoilt = {**values, name: bad}
                            call(method, template, *((spoilt, query) if where == "path" else (path, spoilt)), body)
                for field in BODIES.get((method, template), {}):
                    for bad in [*HOSTILE_IN_BODY, *HOSTILE_NUMBERS, ["\x00"], {"a": "\ud800"}]:
                        if field == "texts" and isinstance(bad, str):
                            spoilt_body = {field: [bad]}
                        else:
                            spoilt_body = {**(body or {}), field: bad}
                            if field == "texts":
                                spoilt_body.pop("text", None)
                        call(method, template, path, query, spoilt_body)
    assert sent > 300, sent  # every parameter and field was tried
