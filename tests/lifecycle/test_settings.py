"""The lifecycle's own settings, and jobs queued by hrlm 0.1 under the old dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrlm.errors import ConfigError, HrlmError
from hrlm.lifecycle.jobs import JobStore
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.service.settings import ServiceSettings
from hrlm.store import make_engine, upgrade


def test_service_settings_hand_down_what_the_lifecycle_reads() -> None:
    service = ServiceSettings(
        database_url="sqlite:///x.db", registry_dir="models", train_data="t.csv", promote_margin=0.02, threads=3
    )
    lifecycle = service.lifecycle()
    assert isinstance(lifecycle, LifecycleSettings)
    assert (lifecycle.database_url, lifecycle.registry_dir, lifecycle.train_data) == (
        "sqlite:///x.db",
        "models",
        "t.csv",
    )
    assert (lifecycle.promote_margin, lifecycle.threads, lifecycle.job_stale_s) == (0.02, 3, 60.0)


def test_the_defaults_are_the_services() -> None:
    service, lifecycle = ServiceSettings(), LifecycleSettings()
    for name in LifecycleSettings.__dataclass_fields__:
        mine, theirs = getattr(lifecycle, name), getattr(service, name)
        if isinstance(theirs, list):  # a list setting of the service is a tuple of the frozen dataclass
            theirs = tuple(theirs)
        assert mine == theirs, name


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"job_runner": "celery"}, "job_runner"),
        ({"job_stale_s": 0}, "job_stale_s"),
        ({"promote_margin": 2}, "promote_margin"),
    ],
)
def test_a_bad_value_names_the_setting(change: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        LifecycleSettings().replace(**change)


def test_a_payload_with_the_whole_service_settings_is_read(tmp_path: Path) -> None:
    # hrlm 0.1 queued jobs with ServiceSettings.model_dump(): keys of the service that the lifecycle ignores
    old = ServiceSettings(registry_dir=str(tmp_path / "reg"), max_batch=7, host="0.0.0.0").model_dump()
    settings = LifecycleSettings.from_mapping(old)
    assert settings.registry_dir == str(tmp_path / "reg")
    assert not hasattr(settings, "max_batch")


def test_a_job_queued_under_the_old_dotted_path_still_runs(tmp_path: Path) -> None:
    from rq.utils import import_attribute

    url = f"sqlite:///{tmp_path / 'hrlm.db'}"
    engine = make_engine(url)
    upgrade(engine)
    store = JobStore(engine)
    job = store.create("retrain", actor="alice", runner="redis")
    entry = import_attribute("hrlm.jobs.rq_entry")  # what RQ does with the function name it stored
    old_payload = ServiceSettings(
        database_url=url, registry_dir=str(tmp_path / "reg"), train_data=__file__, holdout_data=__file__
    ).model_dump()
    with pytest.raises(HrlmError, match="no production version"):
        entry(job["id"], old_payload)  # reaches the retrain, which finds nothing in production
    assert store.get(job["id"])["state"] == "failed"
    engine.dispose()
