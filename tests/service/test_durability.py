"""Acknowledged writes survive `kill -9` of the server; two server processes on one root agree (issue 24, §3)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

BATCH = 4


def setup_cube(api) -> dict[str, str]:
    alice = api.user("alice")
    assert api.http.post("/cubes", json={"cube_id": "notes"}, headers=alice).status_code == 201
    return alice


def stored_ids(api, headers) -> set[str]:
    statuses = {"statuses": ["active", "archived", "deleted"]}
    response = api.http.get("/cubes/notes/memories", params=statuses, headers=headers)
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


@pytest.mark.slow
def test_every_acknowledged_write_survives_kill_9_and_none_is_half_stored(launch, tmp_path):
    root = tmp_path / "root"
    api = launch(root)
    alice = setup_cube(api)
    acknowledged: list[str] = []  # batch names
    sent: list[str] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=f"{api.server.url}/v1", headers=alice, timeout=30) as http:
            for step in range(10**6):
                if stop.is_set():
                    return
                name = f"w{n}-{step}"
                sent.append(name)
                items = [{"text": f"fact {k} of {name}", "id": f"{name}-{k}"} for k in range(BATCH)]
                try:
                    response = http.post("/cubes/notes/memories", json={"items": items})
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if response.status_code == 201:
                    acknowledged.append(name)
                else:
                    return

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    api.server.kill()  # kill -9 in the middle of the burst
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 40
    again = launch(root)
    ids = stored_ids(again, alice)  # alice's old token still works: tokens live in the root too
    for name in acknowledged:
        assert {f"{name}-{k}" for k in range(BATCH)} <= ids, name
    for name in sent:
        present = {f"{name}-{k}" for k in range(BATCH)} & ids
        assert len(present) in (0, BATCH), f"{name}: half stored {sorted(present)}"
    assert len(ids) == BATCH * len({item.rsplit("-", 1)[0] for item in ids})


@pytest.mark.slow
def test_two_server_processes_on_one_root_see_each_other_s_writes(launch, tmp_path):
    root = tmp_path / "root"
    first = launch(root)
    alice = setup_cube(first)
    second = launch(root)
    for n in range(10):
        server = (first, second)[n % 2]
        response = server.http.post(
            "/cubes/notes/memories", json={"items": [{"text": f"fact {n}", "id": f"f{n}"}]}, headers=alice
        )
        assert response.status_code == 201, response.text
    assert stored_ids(first, alice) == stored_ids(second, alice) == {f"f{n}" for n in range(10)}
    assert second.http.patch("/cubes/notes/memories/f0", json={"text": "fact zero"}, headers=alice).status_code == 200
    refused = first.http.patch("/cubes/notes/memories/f0", json={"text": "again"}, headers=alice)
    assert refused.status_code == 409 and "archived" in refused.json()["error"]  # first followed second's update
    hits = first.http.post("/search", json={"query": "fact zero", "top_k": 1}, headers=alice).json()["hits"]
    assert hits[0]["item"]["text"] == "fact zero"


def test_two_uvicorn_workers_on_one_root_answer_alike_whichever_takes_a_request(launch, tmp_path):
    api = launch(tmp_path / "root", "serve.workers=2")
    alice = setup_cube(api)
    names = [
        "amber",
        "basil",
        "cedar",
        "delta",
        "ember",
        "fjord",
        "garnet",
        "hazel",
        "indigo",
        "jasper",
        "koala",
        "lemon",
        "mango",
        "nectar",
        "olive",
        "pepper",
        "quartz",
        "raven",
        "sage",
        "tulip",
        "umber",
        "violet",
        "walnut",
        "yarrow",
    ]
    pids, searched = set(), []
    for n, name in enumerate(names):  # a new connection per request: the kernel hands each to either worker
        with httpx.Client(base_url=f"{api.server.url}/v1", headers=alice, timeout=60) as http:
            pids.add(http.get("/health").json()["pid"])
            added = http.post(
                "/cubes/notes/memories", json={"items": [{"text": f"the kite called {name}", "id": f"k{n}"}]}
            )
            assert added.status_code == 201, added.text
        with httpx.Client(base_url=f"{api.server.url}/v1", headers=alice, timeout=60) as http:
            pids.add(http.get("/health").json()["pid"])
            body = {"query": f"where is {name}", "top_k": 1, "cube_ids": ["notes"]}
            searched.append(http.post("/search", json=body).json()["hits"][0]["item"]["id"])
    assert len(pids) == 2, pids  # both workers answered
    assert searched == [f"k{n}" for n in range(24)]  # each search saw the add just acknowledged, by either worker
    assert stored_ids(api, alice) == {f"k{n}" for n in range(24)}
