"""Activation caching and parametric edit jobs on the server's local model (tiny Llama), against a real
server process: results, access, bad input, a full queue, and a job killed mid-run (issue 24, §1)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import httpx
import pytest

from memos_lab.client import RemoteMOS
from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import AccessDeniedError, DataError, NotFoundError
from tests.service.conftest import ADMIN_TOKEN
from tests.service.test_api import cube, refused

MODEL = [
    "model=tiny_llama",
    "device=cpu",
    "dtype=float32",
    "parametric=lora",  # plain LoRA; a random tiny model's outputs stay flat, hence the large lr
    "parametric.lr=1e-2",
    "parametric.layers=null",
    "parametric.layer_span=null",
    "parametric.steps=150",
    "parametric.stop_when_learned=false",  # every job trains all its steps: long enough to queue behind
    "serve.max_queued_jobs=1",
]
EDITS = [
    {"subject": "Ada", "prompt": "Ada's favourite colour is", "target_new": " teal"},
    {"subject": "Bo", "relation": "lives in", "prompt": "Bo lives in", "target_new": " Lima", "edit_id": "bo"},
]


def poll(api, headers, job_id: str, until=("done", "failed"), timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = api.http.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s")


def add(api, headers, cube_id, *texts: str) -> None:
    response = api.http.post(
        f"/cubes/{cube_id}/memories", json={"items": [{"text": t} for t in texts]}, headers=headers
    )
    assert response.status_code == 201, response.text


def test_without_a_local_model_activation_and_edits_answer_400_in_one_line(api, fresh):
    alice = api.user(fresh("alice"))
    notes = cube(api, alice, fresh("notes"))
    add(api, alice, notes, "alice likes tea")
    refused(api.http.post(f"/cubes/{notes}/activation", headers=alice), 400, "no local model configured")
    edits = api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS}, headers=alice)
    refused(edits, 400, "no local model configured")
    assert api.http.get(f"/cubes/{notes}", headers=alice).json()["slots"] == []
    assert api.http.get("/info", headers=alice).json()["model"] is None
    paths = api.http.get(f"{api.server.url}/openapi.json").json()["paths"]
    for path in ("/v1/cubes/{cube_id}/activation", "/v1/cubes/{cube_id}/parametric/edits", "/v1/jobs/{job_id}"):
        assert "description" in next(iter(paths[path].values())), path


def test_activation_caches_and_an_edit_job_runs_to_done_with_access_checks_and_bad_input(launch, tmp_path):
    api = launch(tmp_path / "root", *MODEL)
    alice, bob, carol = api.user("alice"), api.user("bob"), api.user("carol")
    notes = cube(api, alice, "notes")
    add(api, alice, notes, "alice likes green tea", "alice lives in Oslo", "alice plays chess")
    assert api.http.put(f"/cubes/{notes}/shares/bob", json={"mode": "read"}, headers=alice).status_code == 200

    cached = api.http.post(f"/cubes/{notes}/activation", json={"max_items": 2}, headers=alice)
    assert cached.status_code == 200, cached.text
    summary = cached.json()
    assert summary["model"] == api.http.get("/info", headers=alice).json()["model"]
    assert summary["memories"] == 2 and summary["caches_added"] == 2 and summary["cache_bytes"] > 0
    again = api.http.post(f"/cubes/{notes}/activation", headers=alice).json()  # all three now
    assert again["memories"] == 3 and again["caches_added"] == 1
    assert again["cached_tokens"] > summary["cached_tokens"]
    assert api.http.get(f"/cubes/{notes}", headers=bob).json()["slots"] == ["activation"]
    refused(api.http.post(f"/cubes/{notes}/activation", headers=bob), 403, "may not write")  # read-only sharee
    refused(api.http.post(f"/cubes/{notes}/activation", headers=carol), 403, "may not write")  # a stranger
    refused(api.http.post(f"/cubes/{notes}/activation", json={"max_items": 0}, headers=alice), 422, "max_items")
    refused(api.http.post("/cubes/nowhere/activation", headers=alice), 404, "no cube")

    submitted = api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS}, headers=alice)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["status"] in ("queued", "running") and job["cube_id"] == notes and job["result"] is None
    refused(api.http.get(f"/jobs/{job['job_id']}", headers=bob), 404, "no job")  # only its submitter sees it
    refused(api.http.get("/jobs/no-such-job", headers=alice), 404, "no job")
    done = poll(api, alice, job["job_id"])
    assert done["status"] == "done", done
    result = done["result"]
    assert result["edits"] == 2 and result["edits_total"] == 2 and result["steps"] == 150
    assert result["adapters"] == ["default"] and result["train_s"] > 0
    assert done["started_at"] >= done["submitted_at"] and done["finished_at"] >= done["started_at"]
    assert api.http.get(f"/cubes/{notes}", headers=alice).json()["slots"] == ["activation", "parametric"]

    for body, status, words in [
        ({"edits": [{"subject": "Ada", "prompt": "Ada is"}]}, 422, "target_new"),  # a bad edit shape
        ({"edits": [{**EDITS[0], "target_new": 7}]}, 422, "target_new"),
        ({"edits": []}, 400, "send 1 to"),
        ({"edits": [EDITS[0], {**EDITS[0], "target_new": " red"}]}, 400, "contradictory edits"),
        ({"edits": EDITS, "adapter": "../x"}, 400, "adapter"),
        ({"edits": EDITS, "extra": 1}, 422, "extra"),
    ]:
        refused(api.http.post(f"/cubes/{notes}/parametric/edits", json=body, headers=alice), status, words)
    refused(api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS}, headers=bob), 403, "may not")
    refused(api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS}, headers=carol), 403, "may not")

    # one job runs, one waits (serve.max_queued_jobs=1): a third is refused until the queue drains
    answers = [
        api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": [{**EDITS[0], "target_new": f" c{n}"}]},
                      headers=alice)
        for n in range(3)
    ]  # fmt: skip
    assert [a.status_code for a in answers].count(429) >= 1, [a.status_code for a in answers]
    refused(next(a for a in answers if a.status_code == 429), 429, "job queue is full")
    busy = api.http.post(f"/cubes/{notes}/activation", headers=alice)  # the model is training
    refused(busy, 409, "training a parametric edit job")
    for accepted in [a.json() for a in answers if a.status_code == 202]:
        assert poll(api, alice, accepted["job_id"])["status"] == "done"
    final = api.http.post(f"/cubes/{notes}/activation", headers=alice).json()
    assert final["caches_added"] == 0  # the caches stayed; the edits left the activation slot alone


@pytest.mark.slow
def test_a_job_killed_mid_run_is_failed_after_restart_and_the_saved_slots_load(launch, tmp_path):
    root = tmp_path / "root"
    api = launch(root, *MODEL)
    alice = api.user("alice")
    notes = cube(api, alice, "notes")
    add(api, alice, notes, "alice likes green tea")
    assert api.http.post(f"/cubes/{notes}/activation", headers=alice).status_code == 200
    first = api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS}, headers=alice).json()
    assert poll(api, alice, first["job_id"])["status"] == "done"
    second = api.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS[:1]}, headers=alice).json()
    poll(api, alice, second["job_id"], until=("running",))
    api.server.kill()  # kill -9 while it trains

    again = launch(root, *MODEL)
    lost = poll(again, alice, second["job_id"])
    assert lost["status"] == "failed" and "server stopped before the job finished" in lost["error"]
    assert poll(again, alice, first["job_id"])["status"] == "done"  # a finished job stays done
    assert again.http.get(f"/cubes/{notes}", headers=alice).json()["slots"] == ["activation", "parametric"]
    assert again.http.post(f"/cubes/{notes}/activation", headers=alice).json()["caches_added"] == 0  # loaded
    third = again.http.post(f"/cubes/{notes}/parametric/edits", json={"edits": EDITS[1:]}, headers=alice).json()
    result = poll(again, alice, third["job_id"])["result"]
    assert result["edits_total"] == 2  # the first job's two edits came back with the cube, "bo" replaced


PER_ITEM = {"max_items": 200, "assembled": False}  # 200 memories assembled would overflow the tiny model's context


def test_searches_are_answered_while_an_activation_request_runs_and_its_cubes_updates_wait(launch, tmp_path):
    api = launch(tmp_path / "root", *MODEL)
    alice = api.user("alice")
    notes, empty = cube(api, alice, "notes"), cube(api, alice, "empty")
    add(api, alice, notes, *[f"alice noted fact {n}: the kite number {n} is {n % 7} metres long" for n in range(200)])
    first = api.http.post("/search", json={"query": "kite number 17", "cube_ids": [notes]}, headers=alice).json()
    finished: dict[str, httpx.Response] = {}

    def call(name: str, method: str, path: str, body: dict) -> None:
        with httpx.Client(base_url=f"{api.server.url}/v1", headers=alice, timeout=600) as http:
            finished[name] = http.request(method, path, json=body)

    caching = threading.Thread(target=call, args=("cached", "POST", f"/cubes/{notes}/activation", PER_ITEM))
    caching.start()
    deadline = time.monotonic() + 120
    while api.http.post(f"/cubes/{empty}/activation", headers=alice).status_code != 409:  # the model is not busy yet
        assert time.monotonic() < deadline and caching.is_alive(), "never saw the activation request running"
    searched = api.http.post("/search", json={"query": "kite number 17", "cube_ids": [notes]}, headers=alice)
    refused(api.http.post(f"/cubes/{empty}/activation", headers=alice), 409, "caching another request's activations")
    # the model's lock was held before and after the search: the search was answered during the activation
    assert searched.status_code == 200 and searched.json() == first
    target = first["hits"][0]["item"]["id"]
    updating = threading.Thread(
        target=call, args=("updated", "PATCH", f"/cubes/{notes}/memories/{target}", {"text": "the kite is gone"})
    )
    updating.start()
    caching.join()
    updating.join()
    cached, updated = finished["cached"], finished["updated"]
    assert cached.status_code == 200 and cached.json()["caches_added"] == 200, cached.text
    assert updated.status_code == 200, updated.text  # sent while the caching ran, so it waited for it
    again = api.http.post(f"/cubes/{notes}/activation", json=PER_ITEM, headers=alice).json()
    assert again["caches_added"] == 1  # the updated memory's new text ...
    assert again["caches_total"] == cached.json()["caches_total"]  # ... in place of its old one: none kept stale


def test_the_remote_mos_caches_activations_and_runs_edit_jobs_as_the_http_api_does(launch, tmp_path):
    api = launch(tmp_path / "root", *MODEL)
    remote = RemoteMOS(api.server.url, admin_token=ADMIN_TOKEN, namespace="run1-")
    remote.register_user("alice")
    remote.register_user("bob")
    remote.create_cube("alice", "notes")
    remote.add("alice", "notes", ["alice likes green tea", "alice lives in Oslo", "alice plays chess"])

    summary = remote.cache_activation("alice", "notes", max_items=2)
    assert summary["cube_id"] == "notes" and summary["memories"] == 2 and summary["caches_added"] == 2
    assert remote.cache_activation("alice", "notes")["caches_added"] == 1  # the third; the two are kept
    assert remote.describe("alice", "notes").slots == ("activation",)
    with pytest.raises(AccessDeniedError, match="may not write"):
        remote.cache_activation("bob", "notes")

    edits = [KnowledgeEdit(edit_id=e.get("edit_id", f"e{n}"), relation=e.get("relation", ""), **{k: e[k] for k in ("subject", "prompt", "target_new")}) for n, e in enumerate(EDITS)]  # fmt: skip
    job = remote.submit_edits("alice", "notes", edits)
    assert job["status"] in ("queued", "running") and job["cube_id"] == "notes"
    done = remote.wait_job("alice", job["job_id"], timeout_s=300, poll_s=0.05)
    assert done["status"] == "done" and done["result"]["edits_total"] == 2 and done["cube_id"] == "notes"
    assert remote.job("alice", job["job_id"]) == done
    assert remote.describe("alice", "notes").slots == ("activation", "parametric")
    with pytest.raises(NotFoundError, match="no job"):
        remote.job("bob", job["job_id"])  # only its submitter sees it
    with pytest.raises(DataError, match="contradictory edits"):
        remote.submit_edits("alice", "notes", [edits[0], replace(edits[0], edit_id="e9", target_new=" red")])
    remote.close()
