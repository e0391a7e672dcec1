"""The HTTP API end to end against a real server process: access, bad input, nothing stored changes (issue 24)."""

from __future__ import annotations

import httpx
import pytest


def cube(api, headers, cube_id, **body) -> str:
    response = api.http.post("/cubes", json={"cube_id": cube_id, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return cube_id


def texts(api, headers, cube_id, statuses=("active",)) -> dict[str, str]:
    response = api.http.get(f"/cubes/{cube_id}/memories", params={"statuses": list(statuses)}, headers=headers)
    assert response.status_code == 200, response.text
    return {item["id"]: item["text"] for item in response.json()["items"]}


def refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and words in body["error"], body


def test_a_user_adds_searches_updates_merges_and_deletes(api, fresh):
    alice = api.user(fresh("alice"))
    notes = cube(api, alice, fresh("notes"))
    added = api.http.post(
        f"/cubes/{notes}/memories",
        json={
            "items": [
                {"text": "alice likes green tea", "tags": ["food"], "session": "s1"},
                {"text": "alice lives in Oslo", "id": "home/1"},
            ]
        },
        headers=alice,
    )
    assert added.status_code == 201
    tea, home = added.json()["ids"]
    assert home == "home/1"
    hits = api.http.post("/search", json={"query": "green tea", "top_k": 1}, headers=alice).json()["hits"]
    assert [(hit["cube_id"], hit["item"]["id"]) for hit in hits] == [(notes, tea)]
    filtered = api.http.post("/search", json={"query": "alice", "filters": {"tags": ["food"]}}, headers=alice)
    assert [hit["item"]["id"] for hit in filtered.json()["hits"]] == [tea]
    assert api.http.get(f"/cubes/{notes}/memories/home/1", headers=alice).json()["text"] == "alice lives in Oslo"
    newer = api.http.patch(
        f"/cubes/{notes}/memories/{tea}", json={"text": "alice likes black tea"}, headers=alice
    ).json()
    assert newer["metadata"]["predecessor_id"] == tea and newer["metadata"]["tags"] == ["food"]
    merged = api.http.post(
        f"/cubes/{notes}/merge", json={"item_ids": [newer["id"], home], "text": "tea in Oslo"}, headers=alice
    )
    assert merged.status_code == 200, merged.text
    assert api.http.delete(f"/cubes/{notes}/memories/{merged.json()['id']}", headers=alice).status_code == 200
    assert texts(api, alice, notes) == {}
    assert len(texts(api, alice, notes, ("archived", "deleted"))) == 4
    assert api.http.get("/me", headers=alice).json()["user_id"].startswith("alice")


def test_access_a_stranger_a_read_only_sharee_and_a_revoked_token(api, fresh):
    alice, bob_id, carol_id = api.user(fresh("alice")), fresh("bob"), fresh("carol")
    bob, carol = api.user(bob_id), api.user(carol_id)
    notes = cube(api, alice, fresh("notes"))
    [secret] = api.http.post(
        f"/cubes/{notes}/memories", json={"items": [{"text": "the secret"}]}, headers=alice
    ).json()["ids"]
    refused(api.http.get(f"/cubes/{notes}/memories/{secret}", headers=carol), 403, "may not read")
    refused(api.http.post("/search", json={"query": "secret", "cube_ids": [notes]}, headers=carol), 403, "may not read")
    assert (
        api.http.post("/search", json={"query": "secret"}, headers=carol).json()["hits"] == []
    )  # not among carol's cubes
    assert api.http.put(f"/cubes/{notes}/shares/{bob_id}", json={"mode": "read"}, headers=alice).status_code == 200
    assert api.http.get(f"/cubes/{notes}/memories/{secret}", headers=bob).status_code == 200
    refused(
        api.http.post(f"/cubes/{notes}/memories", json={"items": [{"text": "bob"}]}, headers=bob), 403, "may not write"
    )
    refused(api.http.patch(f"/cubes/{notes}/memories/{secret}", json={"text": "x"}, headers=bob), 403, "may not write")
    refused(api.http.delete(f"/cubes/{notes}/memories/{secret}", headers=bob), 403, "may not write")
    refused(api.http.put(f"/cubes/{notes}/shares/{carol_id}", json={"mode": "write"}, headers=bob), 403, "does not own")
    assert api.http.delete(f"/cubes/{notes}/shares/{bob_id}", headers=alice).status_code == 200
    refused(api.http.get(f"/cubes/{notes}/memories/{secret}", headers=bob), 403, "may not read")
    token = api.token(bob_id)
    token_id = token.split("_")[1]
    assert api.http.get("/cubes", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.http.delete(f"/admin/tokens/{token_id}", headers=api.admin).status_code == 200
    refused(api.http.get("/cubes", headers={"Authorization": f"Bearer {token}"}), 401, "revoked")
    refused(api.http.post("/admin/users", json={"user_id": "mallory"}, headers=alice), 401, "not the admin token")
    assert texts(api, alice, notes) == {secret: "the secret"}


def test_a_team_cube_is_written_by_every_member(api, fresh):
    lead_id, agent_id = fresh("lead"), fresh("agent")
    lead, agent = api.user(lead_id), api.user(agent_id)
    team = cube(api, lead, fresh("team"), members=[lead_id, agent_id])
    assert (
        api.http.post(
            f"/cubes/{team}/memories", json={"items": [{"text": "agent found it"}]}, headers=agent
        ).status_code
        == 201
    )
    assert list(texts(api, lead, team).values()) == ["agent found it"]
    assert team in api.http.get("/cubes", headers=agent).json()["cube_ids"]


@pytest.mark.parametrize(
    "token, words",
    [
        (None, "missing bearer token"),
        ("garbage", "malformed token"),
        ("mlt_0123456789abcdef_" + "A" * 43, "unknown token"),
    ],
)
def test_missing_garbage_and_unknown_tokens_get_401(api, token, words):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    refused(api.http.get("/cubes", headers=headers), 401, words)


def test_an_expired_token_gets_401(api, fresh):
    import time

    user = fresh("dora")
    api.user(user)
    token = api.token(user, ttl_s=0.5)
    time.sleep(0.6)
    refused(api.http.get("/cubes", headers={"Authorization": f"Bearer {token}"}), 401, "expired")


def test_bad_input_gets_a_4xx_line_and_changes_nothing(api, fresh):
    alice = api.user(fresh("alice"))
    notes = cube(api, alice, fresh("notes"))
    [kept] = api.http.post(
        f"/cubes/{notes}/memories", json={"items": [{"text": "kept", "id": "kept"}]}, headers=alice
    ).json()["ids"]
    json_headers = {**alice, "Content-Type": "application/json"}
    refused(api.http.post(f"/cubes/{notes}/memories", content=b'{"items": [', headers=json_headers), 422, "JSON")
    refused(
        api.http.post(f"/cubes/{notes}/memories", json={"items": [{"text": 5}]}, headers=alice), 422, "items.0.text"
    )
    refused(
        api.http.post(f"/cubes/{notes}/memories", json={"items": [{"text": "x", "status": "active"}]}, headers=alice),
        422,
        "status",
    )
    refused(api.http.post("/search", json={"query": "kept", "top_k": "ten"}, headers=alice), 422, "top_k")
    refused(api.http.post("/search", json={"query": "kept", "top_k": 10**6}, headers=alice), 400, "serve.max_top_k")
    refused(api.http.post("/search", json={"query": "kept", "top_k": 0}, headers=alice), 422, "top_k")
    big = [{"text": "item"} for _ in range(257)]
    refused(api.http.post(f"/cubes/{notes}/memories", json={"items": big}, headers=alice), 400, "serve.max_batch")
    huge = {"items": [{"text": "x" * 2_000_000}]}
    refused(api.http.post(f"/cubes/{notes}/memories", json=huge, headers=alice), 413, "serve.max_body_bytes")

    def chunks():
        yield b'{"items": [{"text": "'
        for _ in range(40):
            yield b"y" * 50_000
        yield b'"}]}'

    refused(
        api.http.post(f"/cubes/{notes}/memories", content=chunks(), headers=json_headers), 413, "serve.max_body_bytes"
    )
    # one bad item stores none of the batch
    batch = {"items": [{"text": "fine"}, {"text": "dup", "id": "kept"}]}
    refused(api.http.post(f"/cubes/{notes}/memories", json=batch, headers=alice), 409, "already exists")
    refused(
        api.http.post(
            f"/cubes/{notes}/memories", json={"items": [{"text": "x", "id": "../../etc/passwd"}]}, headers=alice
        ),
        400,
        "memory item id",
    )
    refused(api.http.post(f"/cubes/{notes}/memories", json={"items": [{"text": " "}]}, headers=alice), 409, "non-empty")
    refused(api.http.get(f"/cubes/{notes}/memories/no-such-item", headers=alice), 404, "no memory item")
    refused(
        api.http.get(f"/cubes/{notes}/memories/../../registry.json", headers=alice),
        404,
        "no cube with id 'registry.json'",
    )  # a cube id, never a path
    refused(api.http.get("/cubes/..%2F..%2Fregistry/memories", headers=alice), 404, "no endpoint")
    refused(api.http.get("/cubes/%2E%2E/memories", headers=alice), 404, "")
    refused(api.http.post("/cubes", json={"cube_id": "../escape"}, headers=alice), 400, "cube id")
    refused(api.http.post("/cubes/nope/memories", json={"items": [{"text": "x"}]}, headers=alice), 404, "no cube")
    refused(api.http.patch(f"/cubes/{notes}/memories/{kept}", json={"text": ""}, headers=alice), 409, "non-empty")
    refused(api.http.post(f"/cubes/{notes}/merge", json={"item_ids": [kept]}, headers=alice), 409, "two or more")
    refused(api.http.put(f"/cubes/{notes}/shares/nobody", json={"mode": "read"}, headers=alice), 404, "unknown user")
    refused(api.http.put(f"/cubes/{notes}/shares/nobody", json={"mode": "admin"}, headers=alice), 422, "mode")
    assert texts(api, alice, notes, ("active", "archived", "deleted")) == {kept: "kept"}
    assert not list(api.server.root.parent.glob("escape*")) and not (api.server.root / "escape").exists()


def test_the_openapi_document_is_served_and_a_rate_limit_answers_429(launch, tmp_path, fresh):
    api = launch(tmp_path / "root", "serve.rate_per_s=1", "serve.rate_burst=3")
    schema = api.http.get(f"{api.server.url}/openapi.json").json()
    assert "/v1/search" in schema["paths"] and "/v1/cubes/{cube_id}/memories" in schema["paths"]
    alice = api.user("alice")
    statuses = [api.http.get("/cubes", headers=alice).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
    refused(api.http.get("/cubes", headers=alice), 429, "rate limit")


def test_an_items_json_holds_every_metadata_field_as_a_plain_value():
    import json
    from dataclasses import asdict

    from memos_lab.memory.item import MemoryItem, MemoryMetadata
    from memos_lab.service.app import item_json

    metadata = MemoryMetadata(user="u", session="s", tags=("a", "b"), version=3, extra={"key": "k", "note": "n"})
    item = MemoryItem(text="t", metadata=metadata)
    expected = {**asdict(metadata), "tags": ["a", "b"], "extra": {"key": "k", "note": "n"}}
    assert item_json(item) == {"id": item.id, "text": "t", "metadata": expected}
    assert json.loads(json.dumps(item_json(item))) == item_json(item)  # JSON as it is, nothing left to encode
