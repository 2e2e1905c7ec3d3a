"""Service pieces without a server: settings, the job store's state machine, source policy, SSE parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moecarve.client import parse_sse
from moecarve.recipe import Recipe
from service.policy import SourceNotAllowed, confine_recipe
from service.settings import Settings, SettingsError
from service.store import JobStore, KeyInFlight, KeyReused

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]


def test_service_modules_do_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from service.settings import Settings\n"
        "from service.app import create_app\n"
        "import service.cli, service.pool, service.worker, moecarve.client, moecarve.cli\n"
        "from moecarve.plan import plan\n"
        "from moecarve.recipe import Recipe\n"
        "create_app(Settings(data_dir=sys.argv[1], open_access=True))\n"
        "plan(Recipe.parse({'moe': 'S2A2E16', 'partition': {'method': 'coact'}, 'router': {'method': 'centroid'}}))\n"
        "moecarve.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_settings_from_env_and_access_policy(tmp_path: Path) -> None:
    env = {
        "MOECARVE_DATA_DIR": str(tmp_path),
        "MOECARVE_API_KEYS": "key-one-0123456789abc, key-two-0123456789abc",
        "MOECARVE_ALLOWED_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
        "MOECARVE_WORKERS": "3",
        "MOECARVE_ALLOW_HUB": "true",
    }
    s = Settings.from_env(env, workers=2)
    assert s.keys() == ["key-one-0123456789abc", "key-two-0123456789abc"]
    assert s.allowed_roots == (tmp_path / "a", tmp_path / "b") and s.workers == 2 and s.allow_hub
    assert "key-one" not in repr(s)  # keys are secrets
    s.check_access()
    with pytest.raises(SettingsError, match="MOECARVE_OPEN_ACCESS"):
        Settings.from_env({"MOECARVE_DATA_DIR": str(tmp_path)}).check_access()
    Settings.from_env({"MOECARVE_OPEN_ACCESS": "1"}).check_access()
    with pytest.raises(SettingsError, match="16 characters"):
        Settings.from_env({"MOECARVE_API_KEYS": "short"}).check_access()
    with pytest.raises(SettingsError):
        Settings.from_env({"MOECARVE_WORKERS": "many"})


def _job(store: JobStore, owner: str = "o") -> str:
    return store.create(owner=owner, recipe={"moe": "S1A1E2"}, plan={}).id


def test_store_state_machine(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    a, b, c = _job(store), _job(store), _job(store)
    assert store.claim("w1").id == a and store.claim("w2").id == b  # oldest first, never twice
    assert store.progress(a, "w1", "carve", 1, 4, "layer 1") == "running"
    assert store.progress(a, "w2", "carve", 2, 4, "not my job") == "running"  # ignored
    assert store.get(a).step == 1
    assert store.request_cancel(c, "someone-else") is None
    assert store.request_cancel(c, "o").status == "cancelled"  # queued → cancelled at once
    assert store.request_cancel(a, "o").status == "cancelling"
    assert store.progress(a, "w1", "carve", 2, 4, "layer 2") == "cancelling"
    assert store.finish(a, "w1", "cancelled")
    assert not store.finish(a, "w1", "succeeded")  # terminal stays terminal
    assert store.reap(workers=["w2"], reason="worker process 9 was killed by SIGKILL") == [b]
    job_b = store.get(b)
    assert (
        job_b.status == "failed"
        and job_b.error_type == "WorkerLost"
        and "SIGKILL" in job_b.error_message
    )
    kinds = [(e.kind, e.data.get("status")) for e in store.events(a)]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        ("progress", None),
        ("status", "cancelling"),
        ("progress", None),
        ("status", "cancelled"),
    ]
    assert [e.seq for e in store.events(a, after=4)] == [5, 6]
    assert store.delete(a, "o") and store.get(a) is None and store.events(a) == []


def test_store_requeue_and_stale_heartbeats(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    a, b = _job(store), _job(store)
    store.claim("w1")
    assert store.requeue(a, "w1", "worker stopping")
    assert store.get(a).status == "queued" and store.get(a).worker is None
    assert store.claim("w2").id == a and store.claim("w3").id == b
    assert store.reap(stale_after=60.0, reason="stale") == []
    assert sorted(store.reap(stale_after=0.0, reason="stale")) == sorted([a, b])


def test_store_finds_cancels_overdue_for_the_pool(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    a = _job(store)
    store.claim("w1")
    store.request_cancel(a, "o")
    assert store.overdue_cancels(["w1"], grace=60.0) == []
    assert store.overdue_cancels(["w1"], grace=0.0) == ["w1"]
    assert store.overdue_cancels(["w2"], grace=0.0) == []
    assert store.reap(workers=["w1"], reason="killed") == [a]
    assert store.get(a).status == "cancelled"  # a job killed while cancelling ends cancelled


def test_store_idempotency_keys(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.reserve_key("o", "k", "h1") is None
    with pytest.raises(KeyInFlight):
        store.reserve_key("o", "k", "h1")
    with pytest.raises(KeyReused):
        store.reserve_key("o", "k", "h2")
    assert store.reserve_key("other-owner", "k", "h2") is None
    job = store.create(owner="o", recipe={}, plan={}, idempotency_key="k")
    assert store.reserve_key("o", "k", "h1") == job.id
    store.release_key("other-owner", "k")
    assert store.reserve_key("other-owner", "k", "h3") is None


def test_policy_confines_sources(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "cal.txt").write_text("text")
    (root / "link").symlink_to(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", allowed_roots=(root,), open_access=True)
    recipe = Recipe.parse(
        {"model": f"{root}/./model", "moe": "S1A1E4", "calibration": {"path": f"{root}/cal.txt"}}
    )
    checked = confine_recipe(recipe, settings)
    assert checked.model == str(root / "model") and checked.calibration.path == str(
        root / "cal.txt"
    )
    assert confine_recipe(Recipe.parse({"moe": "S1A1E4"}), settings).model == "smollm2-135m"
    for model in (f"{root}/link", f"{root}/../root/../", "model", "org/name", "/"):
        with pytest.raises(SourceNotAllowed) as e:
            confine_recipe(Recipe.parse({"model": model, "moe": "S1A1E4"}), settings)
        assert e.value.field == "model"
    online = settings.model_copy(update={"allow_hub": True})
    assert (
        confine_recipe(Recipe.parse({"model": "org/name", "moe": "S1A1E4"}), online).model
        == "org/name"
    )


def test_parse_sse() -> None:
    lines = [
        "id: 1",
        "event: status",
        'data: {"status": "queued"}',
        "",
        ": ping",
        "",
        "event: log",
        "id: 2",
        'data: {"a":',
        "data: 1}",
        "",
    ]
    events = list(parse_sse(iter(lines)))
    assert [(e.id, e.kind, e.data) for e in events] == [
        (1, "status", {"status": "queued"}),
        (2, "log", {"a": 1}),
    ]
