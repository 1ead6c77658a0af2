"""The research API: threads, jobs, their SSE events (order, Last-Event-ID resume, re-attach), cancel,
restart survival, ownership by token."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient


def sse_events(client: TestClient, job_id: str, **headers: str) -> list[dict[str, Any]]:
    """The job's events as ``{"id", "type", "data"}``, read until the stream ends."""
    events = []
    with client.stream("GET", f"/v1/research/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in response.read().decode().split("\n\n"):
            if not frame.strip():
                continue
            fields = dict(line.split(": ", 1) for line in frame.splitlines())
            events.append(
                {"id": int(fields["id"]), "type": fields["event"], "data": json.loads(fields["data"])}
            )
    return events


def wait_for_event(client: TestClient, job_id: str, kind: str) -> None:
    """Read the job's stream until an event of ``kind`` arrives, then leave."""
    with client.stream("GET", f"/v1/research/{job_id}/events") as response:
        for line in response.iter_lines():
            if line == f"event: {kind}":
                return
    raise AssertionError(f"job {job_id} ended without a {kind} event")


def wait_status(client: TestClient, job_id: str, wanted: set[str], **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/v1/research/{job_id}", headers=headers).json()
        if job["status"] in wanted:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {wanted}: {job}")


def test_a_question_streams_its_steps_in_order_then_the_cited_answer(client) -> None:
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    assert job["status"] == "queued" and job["events_url"] == f"/v1/research/{job['id']}/events"
    events = sse_events(client, job["id"])
    kinds = [event["type"] for event in events]
    assert [event["id"] for event in events] == list(range(1, len(events) + 1))
    assert kinds[-1] == "done", events[-1]
    assert kinds[0] == "job" and kinds[1] == "start"
    assert kinds.index("queries") < kinds.index("search") < kinds.index("source") < kinds.index("answer")
    assert kinds.index("answer_token") < kinds.index("answer")
    done = events[-1]["data"]
    assert done["answer"] == "Bram Stoker wrote Dracula [1]."
    assert '<a class="cite" href="#source-1"' in done["html"]
    assert done["sources"][0]["n"] == 1 and "Stoker" in done["sources"][0]["excerpt"]

    thread = client.get(f"/v1/threads/{job['thread_id']}").json()
    assert [m["role"] for m in thread["messages"]] == ["user", "assistant"]
    assert thread["messages"][1]["sources"][0]["source_id"] == done["sources"][0]["source_id"]
    assert thread["jobs"][0]["status"] == "succeeded"
    source = client.get(f"/v1/sources/{done['sources'][0]['source_id']}").json()
    assert source["kind"] == "corpus" and source["title"] == done["sources"][0]["title"]


def test_last_event_id_replays_only_what_was_missed(client) -> None:
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    everything = sse_events(client, job["id"])
    rest = sse_events(client, job["id"], **{"Last-Event-ID": "3"})
    assert rest == everything[3:]
    assert sse_events(client, job["id"], **{"Last-Event-ID": str(len(everything))}) == []


def test_a_run_survives_its_client_leaving_and_can_be_reattached(client, fake_model) -> None:
    fake_model.token_delay = 0.05
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    with client.stream("GET", f"/v1/research/{job['id']}/events") as response:
        first = next(response.iter_lines())  # the client reads one line and goes away
    assert first == "id: 1"
    finished = wait_status(client, job["id"], {"succeeded", "failed"})
    assert finished["status"] == "succeeded"
    events = sse_events(client, job["id"])
    assert events[-1]["type"] == "done" and events[-1]["data"]["answer"] == fake_model.answer


def test_cancel_stops_a_running_job(client, fake_model) -> None:
    fake_model.token_delay = 0.2
    fake_model.answer = " ".join(["Bram Stoker wrote Dracula [1]."] * 20)
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    wait_for_event(client, job["id"], "answer_token")
    assert client.post(f"/v1/research/{job['id']}/cancel").status_code == 200
    assert wait_status(client, job["id"], {"cancelled", "succeeded"})["status"] == "cancelled"
    assert sse_events(client, job["id"])[-1]["type"] == "cancelled"
    assert client.post(f"/v1/research/{job['id']}/cancel").status_code == 409


def test_a_restart_keeps_finished_threads_and_marks_interrupted_jobs_resumable(
    make_client, fake_model
) -> None:
    client = make_client()
    done = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    wait_status(client, done["id"], {"succeeded"})
    fake_model.token_delay = 0.2
    fake_model.answer = " ".join(["Bram Stoker wrote Dracula [1]."] * 20)
    running = client.post("/v1/research", json={"question": "Who was Bram Stoker?"}).json()
    wait_for_event(client, running["id"], "answer_token")
    client.__exit__(None, None, None)  # the server stops mid-run

    fake_model.token_delay = 0.0
    restarted = make_client()
    assert restarted.get(f"/v1/research/{running['id']}").json()["status"] == "interrupted"
    thread = restarted.get(f"/v1/threads/{done['thread_id']}").json()
    assert thread["messages"][1]["content"] == "Bram Stoker wrote Dracula [1]."
    assert sse_events(restarted, done["id"])[-1]["type"] == "done"

    assert restarted.post(f"/v1/research/{running['id']}/resume").status_code == 202
    assert wait_status(restarted, running["id"], {"succeeded", "failed"})["status"] == "succeeded"
    replay = sse_events(restarted, running["id"])
    assert [event["id"] for event in replay] == list(range(1, len(replay) + 1))
    assert "resume" in [event["type"] for event in replay] and replay[-1]["type"] == "done"


def test_a_follow_up_goes_into_the_same_thread_and_threads_can_be_deleted(client, fake_model) -> None:
    first = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    wait_status(client, first["id"], {"succeeded"})
    second = client.post(
        "/v1/research", json={"question": "Where was he born?", "thread_id": first["thread_id"]}
    )
    wait_status(client, second.json()["id"], {"succeeded"})
    # the follow-up's model saw the earlier turn (question and answer) before the new question
    follow_up = [p for p in fake_model.prompts if "Where was he born?" in p]
    assert follow_up and all(p.index("Who wrote Dracula?") < p.index("Where was he born?") for p in follow_up)
    assert all("Bram Stoker wrote Dracula" in p for p in follow_up)
    listed = client.get("/v1/threads").json()
    assert [thread["id"] for thread in listed] == [first["thread_id"]]
    messages = client.get(f"/v1/threads/{first['thread_id']}/messages").json()
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert client.delete(f"/v1/threads/{first['thread_id']}").status_code == 204
    assert client.get(f"/v1/threads/{first['thread_id']}").status_code == 404
    assert client.get(f"/v1/research/{first['id']}").status_code == 404
    assert client.get("/v1/threads").json() == []


def test_deleting_a_thread_stops_its_running_job_first(client, fake_model) -> None:
    fake_model.token_delay = 0.2
    fake_model.answer = " ".join(["Bram Stoker wrote Dracula [1]."] * 20)
    job = client.post("/v1/research", json={"question": "Who wrote Dracula?"}).json()
    wait_for_event(client, job["id"], "answer_token")
    assert client.delete(f"/v1/threads/{job['thread_id']}").status_code == 204
    assert client.get(f"/v1/research/{job['id']}").status_code == 404
    assert client.get("/v1/threads").json() == []
