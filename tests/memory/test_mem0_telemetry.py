"""mem0 must not phone home, even when something imported it before the adapter turned telemetry off."""

import importlib.util
import socket

import pytest

from memos_lab.errors import MemosError
from memos_lab.memory.textual.peers.mem0 import Mem0Memory

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mem0") is None, reason='the peers extra: pip install -e ".[peers]"'
)


def test_no_connection_leaves_the_machine(embedder, tmp_path, monkeypatch):
    import mem0  # imported first, as a user's notebook might, before the adapter sets MEM0_TELEMETRY

    assert mem0
    import posthog

    sent: list[object] = []  # telemetry goes through PostHog's client (uploaded later, from a thread)
    monkeypatch.setattr(posthog.Posthog, "capture", lambda self, *args, **kwargs: sent.append(args))
    looked_up: list[object] = []  # and any connection starts with a name lookup
    real_lookup = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, *rest, **kw: looked_up.append(host) or real_lookup(host, *rest, **kw)
    )
    memory = Mem0Memory(embedder, home=str(tmp_path))
    _, dogs = memory.add(["the cat sat on the mat", "dogs bark at night"])
    memory.update(dogs, "dogs sleep at night")
    texts = sorted(hit.item.text for hit in memory.search("dogs at night", 5))
    assert texts == ["dogs sleep at night", "the cat sat on the mat"]  # the old version is archived, not returned
    import mem0.memory.telemetry as telemetry

    assert telemetry.MEM0_TELEMETRY is False and sent == [] and looked_up == []


def test_with_extraction_a_rewritten_source_item_cannot_be_updated_merged_or_deleted(embedder, tmp_path):
    # The extraction endpoint is a closed local port: the add is a counted failure, never a crash.
    memory = Mem0Memory(embedder, home=str(tmp_path), infer=True, llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    first, second = memory.add(["the cat sat on the mat", "dogs bark at night"])
    assert memory.counters()["extraction_failures"] == 2
    for refused in (
        lambda: memory.update(first, "the cat left"),
        lambda: memory.merge([first, second]),
        lambda: memory.delete(first, hard=True),
    ):
        with pytest.raises(MemosError, match="mem0 rewrote the source items"):
            refused()
    assert memory.get(first).text == "the cat sat on the mat"  # nothing changed


def test_a_temporary_home_outside_a_run_goes_with_its_memory(embedder):
    import gc

    memory = Mem0Memory(embedder)  # no home, no Hydra run: a temporary folder
    home = memory.home
    memory.add(["the cat sat on the mat"])
    assert home.is_dir() and any(home.iterdir())
    del memory
    gc.collect()
    assert not home.exists()
