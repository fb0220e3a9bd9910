"""The model registry: registering, stage moves and their checks, rollback, concurrency, report files, CLI."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.errors import ConfigError, Conflict, ModelError, NotFound
from hrlm.lifecycle.registry import Registry, report_file, version_name
from hrlm.store import make_engine, upgrade
from hrlm.store.tables import audit_log, model_stage_events, model_versions

runner = CliRunner()


def variant(model: Path, folder: Path, tag: str) -> Path:
    """A copy of ``model`` whose hrlm.json differs (so its version name differs), with a report folder."""
    shutil.copytree(model, folder)
    meta = json.loads((folder / "hrlm.json").read_text())
    meta["extra"] = {**meta.get("extra", {}), "tag": tag}
    (folder / "hrlm.json").write_text(json.dumps(meta))
    (folder / "report").mkdir(exist_ok=True)
    (folder / "report" / "report.html").write_text(f"<h1>{tag}</h1>")
    return folder


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Iterator[Registry]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield Registry(engine, tmp_path / "registry")
    engine.dispose()


@pytest.fixture
def models(trained_model: Path, tmp_path: Path) -> list[Path]:
    return [variant(trained_model, tmp_path / "src" / f"router-{i}", f"v{i}") for i in range(4)]


def stages(registry: Registry) -> dict[str, str]:
    return {v.version: v.stage for v in registry.versions()}


def audit_actions(registry: Registry) -> list[tuple[str, str | None]]:
    with registry.engine.connect() as conn:
        return [(r.action, r.target) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]


def test_register_copies_the_folder_and_names_the_version(registry: Registry, models: list[Path]) -> None:
    from hrlm.service.served_model import folder_version

    info = registry.register(models[0], actor="ana", note="first router")
    assert info.version == folder_version(models[0]) == version_name(models[0])
    assert info.path == registry.root / info.version and (info.path / "model.safetensors").is_file()
    assert (info.path / "hrlm.json").read_bytes() == (models[0] / "hrlm.json").read_bytes()
    assert info.stage == "candidate" and info.origin == "register" and info.note == "first router"
    assert info.metrics is not None and 0.0 <= info.metrics["macro_f1"] <= 1.0  # taken from hrlm.json
    assert [(e.from_stage, e.to_stage, e.action, e.actor) for e in registry.history(info.version)] == [
        (None, "candidate", "register", "ana")
    ]
    assert audit_actions(registry) == [("model.register", info.version)]
    # the same folder again is a new version with a unique name; nothing half-copied is left behind
    again = registry.register(models[0], actor="ana")
    assert again.version == f"{info.version}-2" and again.path.is_dir()
    assert sorted(p.name for p in registry.root.iterdir()) == sorted([info.version, again.version])
    # a folder already inside the registry stays where it is, and only once
    with pytest.raises(Conflict, match="already registered as version"):
        registry.register(info.path, actor="ana")
    inside = shutil.copytree(models[1], registry.root / "retrained-tmp")
    kept = registry.register(inside, actor="worker", origin="retrain", parent=info.version)
    assert kept.path == inside and kept.parent == info.version and kept.origin == "retrain"


def test_register_refuses_what_is_not_a_model(registry: Registry, models: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not an hrlm model folder"):
        registry.register(tmp_path, actor="ana")
    with pytest.raises(NotFound, match="no model version 'nope'"):
        registry.register(models[0], actor="ana", parent="nope")
    with pytest.raises(ConfigError, match="origin = 'magic'"):
        registry.register(models[0], actor="ana", origin="magic")
    with pytest.raises(ConfigError, match="stage = 'archived'"):
        registry.register(models[0], actor="ana", stage="archived")
    with pytest.raises(ConfigError, match="lies inside"):
        Registry(registry.engine, models[0] / "registry").register(models[0], actor="ana")
    assert registry.versions() == []
    assert not registry.root.exists() or list(registry.root.iterdir()) == []


def test_concurrent_registrations_of_one_folder_get_distinct_versions(registry: Registry, models: list[Path]) -> None:
    url = registry.engine.url.render_as_string(hide_password=False)
    barrier = threading.Barrier(4)
    done: list[str] = []
    errors: list[BaseException] = []

    def register() -> None:
        other = Registry(make_engine(url), registry.root)
        try:
            barrier.wait()
            done.append(other.register(models[0], actor="ana").version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            other.engine.dispose()

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(set(done)) == 4
    assert sorted(p.name for p in registry.root.iterdir() if not p.name.startswith(".")) == sorted(done)
    assert all((registry.root / v / "model.safetensors").is_file() for v in done)


def test_promote_archives_the_previous_production(registry: Registry, models: list[Path]) -> None:
    a, b, c = (registry.register(m, actor="ana").version for m in models[:3])
    assert registry.production() is None
    assert registry.promote(a, "ana", "first").stage == "production"
    registry.promote(b, "bo", "better on the holdout", gate={"macro_f1": [0.8, 0.9]})
    assert stages(registry) == {a: "archived", b: "production", c: "candidate"}
    assert registry.get(b).gate == {"macro_f1": [0.8, 0.9]}
    moves = [(e.version, e.from_stage, e.to_stage, e.action, e.actor, e.reason) for e in registry.history()]
    assert moves[-3:] == [
        (a, "candidate", "production", "promote", "ana", "first"),
        (a, "production", "archived", "promote", "bo", f"replaced by {b}"),
        (b, "candidate", "production", "promote", "bo", "better on the holdout"),
    ]
    assert audit_actions(registry)[-2:] == [("model.promote", a), ("model.promote", b)]
    with registry.engine.connect() as conn:
        detail = conn.execute(select(audit_log.c.detail).order_by(audit_log.c.id.desc())).scalar()
    assert detail["previous"] == a and detail["reason"] == "better on the holdout"


def test_stage_moves_are_checked(registry: Registry, models: list[Path]) -> None:
    a, b, c = (registry.register(m, actor="ana").version for m in models[:3])
    registry.promote(a, "ana")
    with pytest.raises(Conflict, match="is production already"):
        registry.promote(a, "ana")
    with pytest.raises(Conflict, match="is in production; it leaves production when another"):
        registry.archive(a, "ana")
    with pytest.raises(Conflict, match="is in production"):
        registry.reject(a, "ana")
    gate = {"candidate": {"macro_f1": 0.5}, "production": {"macro_f1": 0.9}, "margin": 0.005}
    assert registry.reject(b, "gate", "worse", gate=gate).gate == gate
    with pytest.raises(Conflict, match=r"was rejected .* --force"):
        registry.promote(b, "ana")
    with pytest.raises(Conflict, match="is rejected already"):
        registry.reject(b, "ana")
    registry.archive(c, "ana", "not needed")
    with pytest.raises(Conflict, match=r"cannot reject version .*: it is archived; only a candidate"):
        registry.reject(c, "ana")
    with pytest.raises(NotFound, match="`hrlm models list`"):
        registry.promote("ghost", "ana")
    # an admin may override the gate, and that is on the record
    registry.promote(b, "ana", "reviewed the report", force=True)
    assert stages(registry) == {a: "archived", b: "production", c: "archived"}
    with registry.engine.connect() as conn:
        detail = conn.execute(select(audit_log.c.detail).order_by(audit_log.c.id.desc())).scalar()
    assert detail["force"] is True and detail["from_stage"] == "rejected"
    # an archived version can come back
    registry.promote(c, "ana")
    assert registry.production().version == c  # type: ignore[union-attr]


def test_rollback_walks_back_through_the_history(registry: Registry, models: list[Path]) -> None:
    with pytest.raises(Conflict, match="nothing to roll back"):
        registry.rollback("ana")
    v1, v2, v3 = (registry.register(m, actor="ana").version for m in models[:3])
    for v in (v1, v2, v3):
        registry.promote(v, "ana")
    assert registry.rollback("ana", "v3 misroutes payroll").version == v2
    assert stages(registry) == {v1: "archived", v2: "production", v3: "archived"}
    # twice goes two back, not back and forth between v2 and v3
    assert registry.rollback("ana").version == v1
    with pytest.raises(Conflict, match=f"no earlier production version to roll back to from '{v1}'"):
        registry.rollback("ana")
    # v3 promoted by hand again: the version in production before it is v1 (v2 was rolled back from)
    registry.promote(v3, "ana")
    assert registry.rollback("ana").version == v1
    rollbacks = [(e.version, e.to_stage) for e in registry.history() if e.action == "rollback"]
    assert rollbacks == [
        (v3, "archived"),
        (v2, "production"),
        (v2, "archived"),
        (v1, "production"),
        (v3, "archived"),
        (v1, "production"),
    ]
    assert [a for a, _ in audit_actions(registry)].count("model.rollback") == 3


def test_rollback_goes_back_to_the_version_replaced_last(registry: Registry, models: list[Path]) -> None:
    v1, v2 = (registry.register(m, actor="ana").version for m in models[:2])
    registry.promote(v1, "ana")
    registry.promote(v2, "ana")
    registry.promote(v1, "ana")  # v2 archived, v1 back
    assert registry.rollback("ana").version == v2


def test_concurrent_promotions_leave_one_production(registry: Registry, models: list[Path], tmp_path: Path) -> None:
    names = [registry.register(m, actor="ana").version for m in models]
    names += [registry.register(models[0], actor="ana").version for _ in range(2)]  # 6 versions
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def promote(version: str) -> None:
        other = Registry(make_engine(registry.engine.url.render_as_string(hide_password=False)), registry.root)
        try:
            barrier.wait()
            other.promote(version, f"admin-{version}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            other.engine.dispose()

    threads = [threading.Thread(target=promote, args=(v,)) for v in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(stages(registry).values()) == ["archived"] * 5 + ["production"]
    # the history is one chain: each promotion archived exactly the version promoted just before it
    events = [e for e in registry.history() if e.action == "promote"]
    order = [e.version for e in events if e.to_stage == "production"]
    replaced = [e.version for e in events if e.to_stage == "archived"]
    assert sorted(order) == sorted(names) and replaced == order[:-1]
    assert registry.production().version == order[-1]  # type: ignore[union-attr]


def test_the_database_refuses_a_second_production_version(registry: Registry, models: list[Path]) -> None:
    a, b = (registry.register(m, actor="ana").version for m in models[:2])
    registry.promote(a, "ana")
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.version == b).values(stage="production"))
    assert stages(registry)[b] == "candidate"


def test_a_failed_stage_change_leaves_no_trace(registry: Registry, models: list[Path]) -> None:
    a = registry.register(models[0], actor="ana").version
    with registry.engine.connect() as conn:
        before = conn.execute(select(model_stage_events)).all(), conn.execute(select(audit_log)).all()
    with pytest.raises(Conflict):
        registry.archive(registry.promote(a, "ana").version, "ana")
    with registry.engine.connect() as conn:
        after = conn.execute(select(model_stage_events)).all(), conn.execute(select(audit_log)).all()
    assert len(after[0]) == len(before[0]) + 1 and len(after[1]) == len(before[1]) + 1  # the promotion only


def test_report_files_and_path_traversal(registry: Registry, models: list[Path], tmp_path: Path) -> None:
    info = registry.register(models[0], actor="ana")
    assert report_file(info.path, "report.html").read_text() == "<h1>v0</h1>"
    (tmp_path / "secret.txt").write_text("secret")
    (info.path / "report" / "link.txt").symlink_to(tmp_path / "secret.txt")
    for name in (
        "../hrlm.json",
        "..",
        "/etc/passwd",
        "a/../../hrlm.json",
        "",
        "link.txt",
        "nope.html",
        "..\\hrlm.json",
    ):
        with pytest.raises(NotFound, match="report files are"):
            report_file(info.path, name)
    path = registry.add_report(info.version, "gate.md", "# gate\ncandidate loses\n")
    assert path == info.path / "report" / "gate.md" and report_file(info.path, "gate.md") == path.resolve()
    for bad in ("../gate.md", ".hidden", "a/b.md"):
        with pytest.raises(ConfigError, match="plain file name"):
            registry.add_report(info.version, bad, "x")
    registry.annotate(info.version, "gate", metrics={"macro_f1": 0.5}, note="measured")
    again = registry.get(info.version)
    assert again.metrics == {"macro_f1": 0.5} and again.note == "measured"


def test_cli_models_commands(db_url: str, models: list[Path], tmp_path: Path) -> None:
    opts = ["--database-url", db_url, "--registry-dir", str(tmp_path / "reg")]
    r = runner.invoke(app, ["models", "register", str(models[0]), "--promote", "--note", "baseline", *opts])
    assert r.exit_code == 0, r.output
    v1 = version_name(models[0])
    assert f"registered {v1} (production)" in r.stdout
    r = runner.invoke(app, ["models", "register", str(models[1]), *opts])
    v2 = version_name(models[1])
    assert r.exit_code == 0 and f"registered {v2} (candidate)" in r.stdout
    r = runner.invoke(app, ["models", "promote", v2, "--reason", "better", *opts])
    assert r.exit_code == 0 and f"promoted {v2}: now production" in r.stdout
    r = runner.invoke(app, ["models", "list", *opts], terminal_width=250)
    assert r.exit_code == 0 and v1 in r.stdout and v2 in r.stdout and "archived" in r.stdout
    assert "F1" in r.stdout and "baseline" in r.stdout
    r = runner.invoke(app, ["models", "show", v2, *opts], terminal_width=250)
    assert r.exit_code == 0 and "stage history" in r.stdout and "better" in r.stdout and "report.html" in r.stdout
    r = runner.invoke(app, ["models", "rollback", "--reason", "misroutes", *opts], terminal_width=250)
    assert r.exit_code == 0 and f"rolled back to {v1} (was {v2}, now archived)" in r.stdout
    r = runner.invoke(app, ["models", "rollback", *opts])
    assert r.exit_code == 1 and "no earlier production version" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["models", "reject", v1, *opts])
    assert r.exit_code == 1 and "is in production" in r.output
    r = runner.invoke(app, ["models", "show", "ghost", *opts])
    assert r.exit_code == 1 and "no model version 'ghost'" in r.output
    engine = make_engine(db_url)
    with engine.connect() as conn:
        actors = {a for (a,) in conn.execute(select(audit_log.c.actor).where(audit_log.c.action.like("model.%")))}
    engine.dispose()
    assert actors and all(a.startswith("cli") for a in actors)
