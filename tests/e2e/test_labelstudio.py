"""hrlm as the ML backend of a real Label Studio server, driven through Label Studio's SDK.

Label Studio (the ``label-studio`` package from PyPI) runs in a virtual environment of its own (it
pins packages hrlm does not): ``.ci/labelstudio`` (CI makes it: ``make labelstudio``), or the
``label-studio`` executable named by ``$HRLM_LABEL_STUDIO``. The test starts it on a free port,
starts hrlm (uvicorn, the tiny model in production), and through the SDK (tests/e2e/labelstudio_driver.py):
imports tasks into a project connected to hrlm and checks that Label Studio got hrlm's predictions,
annotates a task and checks that the annotation reached hrlm's feedback, and presses "Start training"
and checks that hrlm trained a candidate and wrote its gate report. Skipped without Label Studio,
a failure where HRLM_REQUIRE_LABELSTUDIO=1 (CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.e2e.live import free_port
from tests.e2e.test_browser import server  # noqa: F401 (a fixture)
from tests.service.conftest import bearer

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("labelstudio_driver.py")
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the Label Studio user's legacy API token (40 hex)
CONFIG = """<View>
  <Text name="text" value="$ticket"/>
  <Choices name="category" toName="text" choice="single">
    <Choice value="payroll"/><Choice value="leave"/><Choice value="it"/>
  </Choices>
</View>"""
TEXTS = ["my payslip is missing the overtime", "vpn login fails on my laptop", "sick leave days for next week"]


def label_studio_executable() -> Path:
    named = os.environ.get("HRLM_LABEL_STUDIO")
    path = Path(named) if named else ROOT / ".ci" / "labelstudio" / "bin" / "label-studio"
    if not path.exists():
        unavailable("labelstudio", f"no Label Studio at {path}: `make labelstudio`, or set HRLM_LABEL_STUDIO")
    return path


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Label Studio server on a free port, with a fresh data folder and one user."""
    import httpx

    exe = label_studio_executable()
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        # Label Studio refuses to call private addresses unless told; hrlm runs on 127.0.0.1 here
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        # the user made at start gets a legacy API token (--user-token); Label Studio 1.2x accepts one when enabled
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    }
    command = [
        str(exe), "start", "--no-browser", "-p", str(port), "--internal-host", "127.0.0.1", "--data-dir", str(data),
        "--username", "admin@example.org", "--password", "hrlm-test-pass", "--user-token", LS_TOKEN,
        "--log-level", "WARNING",
    ]  # fmt: skip
    log = (data / "label-studio.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # the first start migrates its database: about 30 s on 2 cores
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"Label Studio exited with {proc.returncode}: {(data / 'label-studio.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("Label Studio did not answer /health within 240 s")
            time.sleep(1)
        yield {"url": url, "python": exe.parent / "python", "log": data / "label-studio.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def drive(ls: dict[str, Any], command: str, **args: Any) -> dict[str, Any]:
    """Run one command of the SDK driver with Label Studio's Python; its JSON answer."""
    args = {"ls_url": ls["url"], "ls_token": LS_TOKEN, **args}
    run = subprocess.run(
        [str(ls["python"]), str(DRIVER), command, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    if run.returncode != 0:
        tail = ls["log"].read_text(errors="replace")[-3000:]
        pytest.fail(f"driver {command} failed:\n{run.stderr[-3000:]}\nLabel Studio's log:\n{tail}")
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout:g} s")


def test_label_studio_gets_predictions_sends_annotations_and_starts_training(
    label_studio: dict[str, Any],
    server: dict[str, Any],  # noqa: F811 (the browser tests' server: the tiny model in production, a holdout)
    trained_model: Path,
) -> None:
    import httpx
    from sqlalchemy import select

    from hrlm.inference import Predictor
    from hrlm.lifecycle.registry import Registry
    from hrlm.store.tables import review_feedback

    hrlm, tokens, engine, version = server["base"], server["tokens"], server["engine"], server["version"]
    expected = [p.label for p in Predictor.from_dir(trained_model).predict(TEXTS)]
    # 1. tasks imported into a project connected to hrlm get hrlm's predictions
    connected = drive(label_studio, "connect", label_config=CONFIG, hrlm_url=hrlm, hrlm_token=tokens.admin, texts=TEXTS)
    assert connected["webhooks"] == 1
    by_text = {t["text"]: str(t["id"]) for t in connected["tasks"]}
    for text, label in zip(TEXTS, expected, strict=True):
        preds = connected["predictions"][by_text[text]]
        assert len(preds) == 1, preds
        assert preds[0]["model_version"] == version
        assert preds[0]["result"][0]["value"]["choices"] == [label]
        assert 0 < preds[0]["score"] <= 1

    # 2. an annotation made through Label Studio's API reaches hrlm's feedback
    task = int(by_text[TEXTS[0]])
    wanted = next(lb for lb in ("leave", "it", "payroll") if lb != expected[0])
    annotation = drive(label_studio, "annotate", task=task, label=wanted)["annotation"]

    def stored() -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(select(review_feedback).where(review_feedback.c.source == "labelstudio")).all()

    rows = wait_for("the annotation's webhook", stored)
    assert len(rows) == 1 and rows[0].label == wanted and rows[0].action == "correct"
    assert rows[0].external_id == f"{connected['project']}:annotation:{annotation}"

    # 3. "Start training" queues an hrlm retrain; the candidate gets its gate report
    drive(label_studio, "train", backend=connected["backend"])

    def finished() -> dict[str, Any] | None:
        jobs = httpx.get(f"{hrlm}/v1/jobs", headers=bearer(tokens.admin), timeout=10).json()["jobs"]
        done = [j for j in jobs if j["kind"] == "retrain" and j["state"] in ("succeeded", "failed")]
        return done[0] if done else None

    job = wait_for("the retrain Label Studio started", finished, timeout=240)
    assert job["state"] == "succeeded", job
    assert job["actor"] == "labelstudio:admin"
    result = job["result"]
    assert result["decision"] in ("promoted", "rejected") and result["data"]["feedback"] == 1
    candidate = Registry(engine, server["registry_dir"]).get(result["candidate"])
    assert (candidate.path / "report" / "gate.md").is_file()
