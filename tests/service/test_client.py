"""`RemoteMOS` against a real server gives what the in-process MOS gives, on the main job's data (issue 24, §5)."""

from __future__ import annotations

import hydra.utils
import pytest

from memos_lab.client import RemoteMOS
from memos_lab.data.synthetic import generate_dialogues
from memos_lab.errors import AccessDeniedError, NotFoundError
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.mos import MOS
from memos_lab.settings import group_config

ADMIN_TOKEN = "test-admin-token-0123456789"  # the one tests/service/conftest.py gives its servers


def ranked(mos, user, cube_id, question) -> list[tuple[str, float]]:
    return [(hit.item.id, round(hit.score, 9)) for hit in mos.search(user, question, top_k=10, cube_ids=[cube_id])]


def test_the_main_job_s_searches_give_the_same_hits_remote_and_in_process(api):
    reader = hydra.utils.instantiate(group_config("reader", "fast"))
    local = MOS(lambda: GeneralTextMemory(HashingEmbedder(dim=512)))
    remote = RemoteMOS(api.server.url, admin_token=ADMIN_TOKEN, max_batch=50)
    compared = 0
    for conversation in generate_dialogues(seed=0, n_conversations=2):
        user = f"remote-{conversation.conversation_id}"
        items = reader.read(conversation, user)  # one read: its ids are random
        for mos in (local, remote):
            mos.register_user(user)
            cube = mos.create_cube(user, cube_id=user)
            assert cube.cube_id == user
            mos.add(user, user, items)
        assert [item.id for item in remote.get_all(user, user)] == [item.id for item in local.get_all(user, user)]
        for question in conversation.questions:
            assert ranked(remote, user, user, question.question) == ranked(local, user, user, question.question)
            compared += 1
    assert compared > 10
    first = remote.get_all(user, user)[0]
    newer = remote.update(user, user, first.id, "a new text", tags=("changed",))
    assert remote.get(user, user, newer.id).metadata.tags == ("changed",)
    remote.delete(user, user, newer.id)
    with pytest.raises(NotFoundError, match="no memory item"):
        remote.get(user, user, "no-such-item")
    with pytest.raises(AccessDeniedError, match="holds no token"):
        remote.add("someone-else", user, ["x"])
    remote.close()
