"""Search stages (feedback, MMR, session quota) on cases small enough to check by hand."""

import numpy as np
import pytest

from memos_lab.errors import ConfigError
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.base import SearchHit
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.memory.textual.stages import SearchStages, diversify, feedback, prefer_named_speaker
from memos_lab.models.embedder import HashingEmbedder


def hit(text, vector, score, session="s1"):
    vector = np.asarray(vector, dtype=np.float32) / np.linalg.norm(vector)
    return SearchHit(MemoryItem(text=text, metadata=MemoryMetadata(session=session), embedding=vector), score)


def texts(hits):
    return [h.item.text for h in hits]


def test_mmr_skips_a_near_copy_of_the_first_pick():
    pool = [hit("a", [1, 0], 1.0), hit("a'", [0.99, 0.14], 0.9), hit("b", [0, 1], 0.5)]
    assert texts(diversify(pool, 2, diversity=0.0, session_quota=0)) == ["a", "a'"]  # relevance alone
    # relevance scaled to [0, 1]: a 1, a' 0.8, b 0; after a: a' 0.5*0.8 - 0.5*0.99 < 0, b 0.5*0 - 0.5*0 = 0
    assert texts(diversify(pool, 2, diversity=0.5, session_quota=0)) == ["a", "b"]


def test_session_quota_caps_hits_per_session():
    pool = [hit("a", [1, 0], 3.0, "s1"), hit("b", [1, 1], 2.0, "s1"), hit("c", [0, 1], 1.0, "s2")]
    assert texts(diversify(pool, 2, diversity=0.0, session_quota=1)) == ["a", "c"]
    assert texts(diversify(pool, 3, diversity=0.0, session_quota=1)) == ["a", "c"]  # no third session


def test_feedback_lifts_what_resembles_the_first_hits():
    # First ranking a, x, b; the centroid of the first hit (a) is nearest to b, so b passes x.
    pool = [hit("a", [1, 0], 3.0), hit("x", [0, 1], 2.0), hit("b", [0.9, 0.1], 1.0)]
    ranked = feedback(pool, hits=1, weight=1.0)
    # fused: a 1/61 + 1/61, x 1/62 + 1/63, b 1/63 + 1/62 -> x and b tie; the stable order keeps x first
    assert texts(ranked)[0] == "a" and {texts(ranked)[1], texts(ranked)[2]} == {"x", "b"}
    ranked = feedback(pool, hits=1, weight=2.0)  # the feedback ranking counts more: b (2nd by it) passes x (3rd)
    assert texts(ranked) == ["a", "b", "x"]


def test_only_the_speaker_stage_is_on_by_default_and_settings_are_checked():
    assert SearchStages().speaker_weight > 0 and not SearchStages(speaker_weight=0).stages_active
    with pytest.raises(ConfigError, match="diversity"):
        SearchStages(diversity=1.5)
    with pytest.raises(ConfigError, match="session_quota"):
        GeneralTextMemory(HashingEmbedder(64), session_quota=-1)


def test_backend_search_runs_the_stages():
    memory = GeneralTextMemory(HashingEmbedder(256), session_quota=1)
    memory.add([MemoryItem(text=t, metadata=MemoryMetadata(session=s))
                for t, s in [("red apples", "s1"), ("red apples again", "s1"), ("red cherries", "s2")]])  # fmt: skip
    hits = memory.search("red apples", 3)
    assert [h.item.metadata.session for h in hits] == ["s1", "s2"]


def speaker_hit(text, speaker, score):
    vector = np.ones(2, dtype=np.float32) / np.sqrt(2)
    return SearchHit(
        MemoryItem(text=text, metadata=MemoryMetadata(tags=(f"speaker:{speaker}",)), embedding=vector), score
    )


def test_the_speaker_the_query_names_ranks_first():
    pool = [speaker_hit("b1", "Ben", 3.0), speaker_hit("a1", "Ana", 2.0), speaker_hit("b2", "Ben", 1.0)]
    # Ana's item: 1/62 + 1/61 beats Ben's first (1/61).
    assert texts(prefer_named_speaker("What did Ana's class make?", pool, 1.0)) == ["a1", "b1", "b2"]
    assert texts(prefer_named_speaker("What did Ana and Ben make?", pool, 1.0)) == ["b1", "a1", "b2"]  # both: no change
    assert texts(prefer_named_speaker("What did Anakin make?", pool, 1.0)) == ["b1", "a1", "b2"]  # whole words only
