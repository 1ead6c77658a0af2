"""Safety of the server: tokens and per-token threads, loopback-only without tokens, size and rate
limits, closed CORS, JSON errors without stack traces, only configured models."""

from __future__ import annotations

import pytest

from deepscout.settings import ServerSettings
from deepscout.ui.server import UnsafeBindError, check_bind

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


def test_without_tokens_anyone_on_loopback_may_call_and_only_loopback_is_bound(client) -> None:
    assert client.get("/v1/threads").status_code == 200
    check_bind(ServerSettings(host="127.0.0.1"))
    check_bind(ServerSettings(host="::1"))
    with pytest.raises(UnsafeBindError, match="without API tokens"):
        check_bind(ServerSettings(host="0.0.0.0"))
    check_bind(ServerSettings(host="0.0.0.0", api_tokens=["t"]))


def test_with_tokens_a_token_is_required_and_sees_only_its_own_threads(make_client) -> None:
    client = make_client(api_tokens=["alice-token", "bob-token"])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic alice-token"}):
        response = client.get("/v1/threads", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "auth_error"
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}, headers=ALICE).json()
    thread_id = job["thread_id"]
    assert [t["id"] for t in client.get("/v1/threads", headers=ALICE).json()] == [thread_id]
    assert client.get("/v1/threads", headers=BOB).json() == []
    for path in (f"/v1/threads/{thread_id}", f"/v1/research/{job['id']}", f"/v1/research/{job['id']}/events"):
        assert client.get(path, headers=BOB).status_code == 404
    assert client.delete(f"/v1/threads/{thread_id}", headers=BOB).status_code == 404
    follow_up = {"question": "And?", "thread_id": thread_id}
    assert client.post("/v1/research", json=follow_up, headers=BOB).status_code == 404
    assert client.get(f"/v1/threads/{thread_id}", headers=ALICE).status_code == 200


def test_unlisted_models_and_paths_are_refused(client) -> None:
    for model in ("smollm2", "hf:/etc", "deepseek-v4:/tmp/x", "openai:gpt-4o"):
        response = client.post("/v1/research", json={"question": "q", "model": model})
        assert response.status_code == 404, model
        assert "not served" in response.json()["error"]["message"]
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 404
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["deepscout-agent", "fake"]


def test_bad_input_gets_a_clear_json_4xx_and_no_trace(client) -> None:
    for body in ({}, {"question": ""}, {"question": "q", "max_steps": 0}, {"question": "q", "extra": 1}):
        response = client.post("/v1/research", json=body)
        assert response.status_code == 422
        assert set(response.json()["error"]) == {"message", "type", "code"}
        assert "Traceback" not in response.text
    response = client.post("/v1/research", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert client.get("/v1/research/nope").status_code == 404
    for response in (client.get("/no/such/route"), client.put("/v1/threads")):
        assert response.status_code in (404, 405) and set(response.json()["error"]) == {
            "message",
            "type",
            "code",
        }
    assert client.post("/v1/research/nope/cancel").status_code == 404


def test_request_size_and_rate_limits(make_client) -> None:
    client = make_client(max_request_bytes=2048, rate_limit_per_minute=5)
    response = client.post("/v1/research", json={"question": "x" * 4000})
    assert response.status_code == 413
    chunked = client.post(
        "/v1/research",
        content=iter([b'{"question": "', b"x" * 4000, b'"}']),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413 and "request body over 2048 bytes" in chunked.json()["error"]["message"]
    codes = [client.get("/v1/threads").status_code for _ in range(6)]
    assert codes[:4] == [200] * 4 and codes[-1] == 429


def test_cors_is_closed_unless_origins_are_configured(make_client) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    closed = make_client().options("/v1/research", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors_origins=["https://app.example"])
    allowed = opened.options("/v1/research", headers={**preflight, "Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"


def test_health_metrics_and_openapi(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    client.get("/v1/threads")
    assert 'deepscout_http_requests_total{route="/v1/threads",status="200"}' in client.get("/metrics").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/research", "/v1/research/{job_id}/events", "/v1/chat/completions", "/v1/models"} <= set(
        paths
    )
