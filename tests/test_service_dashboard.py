"""Dashboard routes of the job service: auth, states, the local Plotly bundle, no torch."""

from __future__ import annotations

import pytest
from test_service_harness import KEY_A, KEY_B, small_recipe

pytest_plugins = ["test_service_harness"]
pytestmark = pytest.mark.integration


def test_dashboard_routes(service, service_root):
    client = service.client(KEY_A)
    job = client.submit(small_recipe(service_root), label="dash")
    assert client.wait(job["id"], timeout=300)["status"] == "succeeded"
    url = f"/v1/jobs/{job['id']}/dashboard"
    with service.http(KEY_A) as http:
        page = http.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/static/plotly.min.js"' in page.text and "cdn" not in page.text.lower()
        bundle = http.get("/static/plotly.min.js")
        assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
        index = http.get("/v1/dashboard")
        assert job["id"] in index.text and url in index.text
    with service.http(None) as anon:
        assert anon.get(url).status_code == 401
        assert anon.get(f"{url}?key={KEY_A}").status_code == 200  # links opened in a browser
        assert anon.get(f"{url}?key={KEY_B}").status_code == 404  # another key's job
        assert job["id"] not in anon.get(f"/v1/dashboard?key={KEY_B}").text
