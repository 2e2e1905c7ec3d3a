"""The job service end to end: a real ``moecarve serve`` (uvicorn + one spawned worker) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_service_harness import (
    KEY_A,
    KEY_B,
    Service,
    deep_recipe,
    small_recipe,
    wait_carving,
    wait_status,
)

from moecarve.client import ServiceError

pytestmark = pytest.mark.integration
# The harness fixtures, registered once as a plugin (a session service shared by the modules).
pytest_plugins = ["test_service_harness"]


@pytest.fixture(scope="module")
def done_job(service: Service, service_root: Path) -> dict[str, Any]:
    """A small job submitted (with an Idempotency-Key) and followed over SSE to the end."""
    with service.client() as client:
        job = client.submit(
            small_recipe(service_root), label="round trip", idempotency_key="round-trip-1"
        )
        events = []
        final = client.wait(job["id"], on_event=events.append, timeout=120)
    assert final["status"] == "succeeded", (final, service.log_text())
    return {"job": final, "events": events, "submitted": job}


def test_round_trip_matches_library_carve(
    service: Service, done_job: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    from moecarve import carve, load_pretrained

    submitted, job, events = done_job["submitted"], done_job["job"], done_job["events"]
    assert submitted["status"] == "queued" and submitted["links"]["self"] == f"/v1/jobs/{job['id']}"
    # SSE: queued → running → progress through the stages → succeeded, ids increasing by one.
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    statuses = [e.data["status"] for e in events if e.kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    stages = [e.data["stage"] for e in events if e.kind == "progress"]
    assert {"load", "calibrate", "carve", "evaluate", "export"} <= set(stages)
    assert job["progress"]["stage"] == "export" and job["progress"]["fraction"] == 1.0
    assert job["started_at"] and job["finished_at"] and job["error"] is None

    with service.client() as client:
        out = client.download(job["id"], tmp_path / "downloaded")  # verifies every sha256
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker (MOECARVE_WORKER_THREADS=1)
    try:
        carve(job["recipe"], tmp_path / "library")
    finally:
        torch.set_num_threads(threads)
    served, library = load_pretrained(out), load_pretrained(tmp_path / "library")
    ids = torch.randint(
        0, served.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, library(ids).logits, rtol=0, atol=1e-6)


def test_events_resume_after_last_event_id(service: Service, done_job: dict[str, Any]) -> None:
    job_id, events = done_job["job"]["id"], done_job["events"]
    with service.client() as client:
        resumed = list(client.events(job_id, after=3))
    assert [(e.id, e.kind, e.data) for e in resumed] == [(e.id, e.kind, e.data) for e in events[3:]]
    with service.http() as http:
        r = http.get(f"/v1/jobs/{job_id}/events", params={"after": len(events) - 1})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert f"id: {len(events)}" in r.text and "succeeded" in r.text


def test_range_download_returns_exactly_those_bytes(
    service: Service, done_job: dict[str, Any], tmp_path: Path
) -> None:
    job_id = done_job["job"]["id"]
    with service.client() as client:
        whole = client.read(job_id, "model.safetensors")
        assert client.read(job_id, "model.safetensors", 100, 1123) == whole[100:1124]
        assert client.read(job_id, "model.safetensors", len(whole) - 7) == whole[-7:]
    with service.http() as http:
        r = http.get(
            f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers={"Range": "bytes=5-9"}
        )
        assert r.status_code == 206 and r.content == whole[5:10]
        assert r.headers["content-range"] == f"bytes 5-9/{len(whole)}"
        r = http.get(
            f"/v1/jobs/{job_id}/artifacts/model.safetensors",
            headers={"Range": f"bytes={len(whole)}-"},
        )
        assert r.status_code == 416
        listing = http.get(f"/v1/jobs/{job_id}/artifacts").json()
    size = {a["name"]: a["size"] for a in listing["items"]}
    assert size["model.safetensors"] == len(whole)
    assert {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "routing_stats.json",
        "README.md",
    } <= set(size)


def test_stats_is_routing_stats(service: Service, done_job: dict[str, Any]) -> None:
    with service.client() as client:
        stats = client.stats(done_job["job"]["id"])
    assert stats["layout"] == done_job["job"]["plan"]["layout"]
    assert set(stats["calibration"]) == {"0", "1"}


def test_idempotent_resubmission(
    service: Service, done_job: dict[str, Any], service_root: Path
) -> None:
    first = done_job["submitted"]
    body = {"recipe": small_recipe(service_root), "label": "round trip"}
    with service.http() as http:
        again = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "round-trip-1"})
        assert again.status_code == 202 and again.json()["id"] == first["id"]
        assert (
            again.headers["location"] == f"/v1/jobs/{first['id']}"
            and again.headers["idempotent-replayed"] == "true"
        )
        other = {"recipe": small_recipe(service_root, seed=1), "label": "round trip"}
        reused = http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "round-trip-1"})
        assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == [
            "header",
            "Idempotency-Key",
        ]
        # The same key is independent for another API key.
        with service.http(KEY_B) as http_b:
            r = http_b.post(
                "/v1/jobs",
                json={"recipe": small_recipe(service_root, seed=3)},
                headers={"Idempotency-Key": "round-trip-1"},
            )
            assert r.status_code == 202 and r.json()["id"] != first["id"]
            http_b.post(f"/v1/jobs/{r.json()['id']}/cancel")
    # A request with this key still in flight (reserved, no job yet) → 409.
    from service.deps import owner_of
    from service.store import JobStore

    store = JobStore(service.data_dir / "jobs.sqlite3")
    import hashlib

    from service.schemas import JobCreate

    pending = JobCreate.model_validate({"recipe": small_recipe(service_root, seed=2)})
    digest = hashlib.sha256(pending.model_dump_json().encode()).hexdigest()
    assert store.reserve_key(owner_of(KEY_A), "in-flight-1", digest) is None
    with service.http() as http:
        r = http.post(
            "/v1/jobs",
            json=pending.model_dump(mode="json"),
            headers={"Idempotency-Key": "in-flight-1"},
        )
    assert r.status_code == 409 and r.json()["detail"]["type"] == "IdempotencyKeyInFlight"


def test_auth_401_and_other_keys_get_404(service: Service, done_job: dict[str, Any]) -> None:
    job_id = done_job["job"]["id"]
    with service.http(key=None) as anonymous:
        r = anonymous.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/v1/jobs").status_code == 401
        assert (
            anonymous.get(
                f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer wrong-key-0123456789"}
            ).status_code
            == 401
        )
        assert (
            anonymous.get(
                f"/v1/jobs/{job_id}", headers={"Authorization": f"Basic {KEY_A}"}
            ).status_code
            == 401
        )
    with service.http(KEY_B) as other:
        for path in ("", "/events", "/artifacts", "/artifacts/config.json", "/archive", "/stats"):
            assert other.get(f"/v1/jobs/{job_id}{path}").status_code == 404, path
        assert other.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert job_id not in {j["id"] for j in other.get("/v1/jobs").json()["items"]}
    with service.http() as owner:
        assert owner.get(f"/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"moe": None}, ["body", "recipe", "moe"]),
        ({"moe": {"num_experts": 4, "num_experts_per_tok": 6}}, ["body", "recipe", "moe"]),
        ({"unknown_field": 1}, ["body", "recipe", "unknown_field"]),
        ({"trust_remote_code": True}, ["body", "recipe", "trust_remote_code"]),
        ({"dtype": "int8"}, ["body", "recipe", "dtype"]),
        ({"partition": {"method": "no-such-method"}}, ["body", "recipe", "partition", "method"]),
    ],
)
def test_malformed_recipe_is_422_naming_the_field(
    service: Service, service_root: Path, change: dict[str, Any], loc: list[str]
) -> None:
    recipe = {k: v for k, v in {**small_recipe(service_root), **change}.items() if v is not None}
    with service.http() as http:
        r = http.post("/v1/jobs", json={"recipe": recipe})
    assert r.status_code == 422, r.text
    assert [e["loc"][: len(loc)] for e in r.json()["detail"]] == [loc], r.json()


@pytest.mark.parametrize(
    ("change", "loc", "says"),
    [
        # d_ff = 64 cannot be split into 5 + 2 = 7 equal experts: caught by plan(), before queueing.
        (
            {"moe": {"num_experts": 5, "num_experts_per_tok": 2, "num_shared_experts": 2}},
            "moe",
            "does not fit",
        ),
        ({"overrides": [{"layers": [7], "dense": True}]}, "overrides", "do not exist"),
        ({"calibration": {"max_seq_length": 4096}}, "calibration", "max_position_embeddings"),
        ({"model": "/nonexistent/model"}, "model", "outside the allowed roots"),
    ],
)
def test_impossible_recipe_is_422_before_queueing(
    service: Service, service_root: Path, change: dict[str, Any], loc: str, says: str
) -> None:
    with service.http() as http:
        before = len(http.get("/v1/jobs", params={"limit": 200}).json()["items"])
        r = http.post("/v1/jobs", json={"recipe": small_recipe(service_root, **change)})
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "recipe", loc] and says in error["msg"], error
        assert len(http.get("/v1/jobs", params={"limit": 200}).json()["items"]) == before


def test_model_and_text_paths_are_confined(
    service: Service, service_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside-model"
    shutil.copytree(service_root / "llama", outside)
    escape = service_root / "escape-link"
    if not escape.exists():
        os.symlink(outside, escape)
    sneaky = service_root / "sneaky-model"
    if not sneaky.exists():
        shutil.copytree(service_root / "llama", sneaky)
        (sneaky / "model.safetensors").unlink()
        os.symlink(outside / "model.safetensors", sneaky / "model.safetensors")
    bad_models = [
        "/etc",
        f"{service_root}/../../etc",
        f"{service_root}/llama/../../{outside.parent.name}/{outside.name}",
        str(escape),  # a symlink inside the root pointing out of it
        str(sneaky),  # a model directory whose weights link out of the root
        "llama",  # relative paths are never resolved against the server's directory
        "~/llama",
        "HuggingFaceTB/SmolLM2-135M",  # hub ids: off unless the server is configured online
    ]
    with service.http() as http:
        for model in bad_models:
            r = http.post("/v1/jobs", json={"recipe": small_recipe(service_root, model=model)})
            assert r.status_code == 422, (model, r.text)
            assert r.json()["detail"][0]["loc"] == ["body", "recipe", "model"], (model, r.json())
        for field in ("calibration", "evaluation"):
            for path in (
                "/etc/passwd",
                f"{service_root}/../../etc/passwd",
                "calib.txt",
                [str(service_root / "calib.txt"), "/etc/hostname"],
            ):
                recipe = small_recipe(service_root)
                recipe[field] = {**recipe[field], "path": path}
                r = http.post("/v1/jobs", json={"recipe": recipe})
                assert r.status_code == 422, (field, path, r.text)
                assert r.json()["detail"][0]["loc"] == ["body", "recipe", field, "path"], r.json()


def test_artifact_names_cannot_escape(service: Service, done_job: dict[str, Any]) -> None:
    job_id = done_job["job"]["id"]
    base = f"{service.url}/v1/jobs/{job_id}/artifacts/"
    names = [
        "..%2Fjobs.sqlite3",
        "..%2F..%2Fjobs.sqlite3",
        "%2e%2e/%2e%2e/jobs.sqlite3",
        "%2Fetc%2Fpasswd",
        "checkpoint%2F..%2F..%2F..%2Fjobs.sqlite3",
        "config.json%00",
        "..%5C..%5Cjobs.sqlite3",
        "does-not-exist.json",
    ]
    with httpx.Client(headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        for name in names:
            r = http.get(base + name)  # sent as is (percent-encoded), not normalised by the client
            assert r.status_code == 404, (name, r.status_code, r.text[:200])
            assert b"root:" not in r.content and b"SQLite" not in r.content


def test_cancel_queued_and_running_jobs(service: Service, service_root: Path) -> None:
    with service.client() as client:
        running = client.submit(deep_recipe(service_root), label="to cancel while running")
        queued = client.submit(small_recipe(service_root, seed=7), label="to cancel while queued")
        total = wait_carving(client, running["id"])  # the worker is busy: `queued` stays queued

        with service.http() as http:
            assert http.delete(f"/v1/jobs/{queued['id']}").status_code == 409  # not finished yet
        cancelled = client.cancel(queued["id"])
        assert cancelled["status"] == "cancelled"
        with pytest.raises(ServiceError) as e:
            client.cancel(queued["id"])
        assert e.value.status_code == 409

        with service.http() as http:
            r = http.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelling"
        final = wait_status(client, running["id"], ("cancelled", "failed", "succeeded"), timeout=15)
        assert final["status"] == "cancelled", final
        assert (
            final["progress"]["stage"] == "carve" and final["progress"]["step"] < total
        )  # stopped between layers
        assert client.artifacts(running["id"]) == []
        assert not (service.data_dir / "jobs" / running["id"]).exists()

        queued_events = list(client.events(queued["id"]))
        assert [e.data["status"] for e in queued_events if e.kind == "status"] == [
            "queued",
            "cancelled",
        ]

        client.delete(running["id"])
        with pytest.raises(ServiceError) as e:
            client.job(running["id"])
        assert e.value.status_code == 404


def test_list_filters_and_paginates(service: Service, done_job: dict[str, Any]) -> None:
    with service.client() as client:
        everything = client.jobs(limit=200)["items"]
        assert len(everything) >= 2
        page1 = client.jobs(limit=1)
        page2 = client.jobs(limit=1, cursor=page1["next_cursor"])
        assert [j["id"] for j in page1["items"] + page2["items"]] == [
            j["id"] for j in everything[:2]
        ]
        succeeded = client.jobs(status=["succeeded"])["items"]
        assert done_job["job"]["id"] in {j["id"] for j in succeeded}
        assert all(j["status"] == "succeeded" for j in succeeded)
    with service.http() as http:
        assert http.get("/v1/jobs", params={"status": "exploded"}).status_code == 422


def test_openapi_documents_typed_models(service: Service) -> None:
    with httpx.Client(base_url=service.url) as http:
        schema = http.get("/openapi.json").json()
        assert "swagger-ui" in http.get("/docs").text.lower()
    schemas = schema["components"]["schemas"]
    assert schemas["JobCreate"]["properties"]["recipe"]["$ref"].endswith("/Recipe")
    assert "moe" in schemas["Recipe"]["properties"] and "additionalProperties" in schemas["Recipe"]
    post = schema["paths"]["/v1/jobs"]["post"]
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/JobPublic"
    )
    assert set(schemas["JobStatus"]["enum"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelling",
        "cancelled",
    }
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_api_process_never_loads_torch(service: Service, done_job: dict[str, Any]) -> None:
    """After a whole carve went through it, the API process has no torch library mapped."""
    assert service.proc is not None
    maps = Path(f"/proc/{service.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    mapped = maps.read_text()
    assert "libtorch" not in mapped and "/torch/" not in mapped
    # ...while its worker did load torch (the check above can fail).
    worker = service.worker_pids()[0]
    assert "libtorch" in Path(f"/proc/{worker}/maps").read_text()
