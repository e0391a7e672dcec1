"""Properties of the synthetic datasets that evaluation relies on, and their exact records."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import Counter
from datetime import datetime, timedelta

import pytest

from memos_lab.data import synthetic
from memos_lab.data.schema import (
    KNOWLEDGE_UPDATE,
    MULTI_HOP,
    SINGLE_HOP,
    TEMPORAL,
    UNANSWERABLE,
    Conversation,
)
from memos_lab.data.synthetic import generate_dialogues, generate_facts
from memos_lab.errors import ConfigError
from memos_lab.settings import group_config

CATEGORIES = {SINGLE_HOP, MULTI_HOP, TEMPORAL, KNOWLEDGE_UPDATE, UNANSWERABLE}
# Value pools whose entries can be a knowledge-update answer; the old value comes from the same pool.
WORDS = synthetic._words()
UPDATE_POOLS = (tuple(city for city, _ in WORDS.cities), WORDS.companies, *WORDS.preferences.values())


@pytest.fixture(scope="module")
def conversations() -> list[Conversation]:
    return generate_dialogues(seed=7)


def mentions(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}", text, re.IGNORECASE) is not None


def test_dialogues_are_deterministic() -> None:
    assert generate_dialogues(seed=3, n_conversations=2) == generate_dialogues(seed=3, n_conversations=2)
    assert generate_dialogues(seed=3, n_conversations=2) != generate_dialogues(seed=4, n_conversations=2)
    # More conversations extend the list without changing the ones already there.
    assert generate_dialogues(seed=3, n_conversations=3)[:2] == generate_dialogues(seed=3, n_conversations=2)


def test_default_sizes(conversations: list[Conversation]) -> None:
    assert [c.conversation_id for c in conversations] == [f"synth-{i}" for i in range(8)]
    assert sum(len(c.turns) for c in conversations) == 8 * 8 * 16
    for conversation in conversations:
        assert [s.session_id for s in conversation.sessions] == [f"session_{i}" for i in range(1, 9)]
        assert all(len(s.turns) == 16 for s in conversation.sessions)
        assert 20 <= len(conversation.questions) <= 30


def test_turns_are_well_formed(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        turns = conversation.turns
        assert len({t.turn_id for t in turns}) == len(turns)
        assert len(set(conversation.speakers)) == 2
        times = [datetime.fromisoformat(s.time) for s in conversation.sessions]
        assert all(later - earlier > timedelta(days=13) for earlier, later in itertools.pairwise(times))
        for n, session in enumerate(conversation.sessions, 1):
            assert [t.turn_id for t in session.turns] == [f"D{n}:{i}" for i in range(1, len(session.turns) + 1)]
            assert all(t.session_id == session.session_id and t.time == session.time for t in session.turns)
            speakers = [t.speaker for t in session.turns]
            assert all(a != b for a, b in itertools.pairwise(speakers))
            assert set(speakers) == set(conversation.speakers)
            assert all("{" not in t.text for t in session.turns)  # every template field was filled


def test_questions_reference_real_turns(conversations: list[Conversation]) -> None:
    ids = [q.question_id for c in conversations for q in c.questions]
    assert len(set(ids)) == len(ids)
    for conversation in conversations:
        turn_ids = {t.turn_id for t in conversation.turns}
        categories = Counter(q.category for q in conversation.questions)
        assert set(categories) == CATEGORIES
        for question in conversation.questions:
            assert set(question.evidence) <= turn_ids
            assert len(question.evidence) == len(set(question.evidence))
            assert question.answer
            assert (len(question.evidence) >= 2) == (question.category == MULTI_HOP)


def test_answers_appear_in_evidence(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        text = {t.turn_id: t.text for t in conversation.turns}
        for question in conversation.questions:
            if question.category in (SINGLE_HOP, MULTI_HOP, KNOWLEDGE_UPDATE):
                assert any(mentions(text[e], question.answer) for e in question.evidence), question
                # The question is reworded, not a copy of an evidence turn.
                assert all(question.question.rstrip("?") not in text[e] for e in question.evidence)


def test_update_values_do_not_contain_one_another() -> None:
    # Otherwise an old value ("table tennis") would also mention the new one ("tennis").
    for pool in UPDATE_POOLS:
        assert not [(a, b) for a in pool for b in pool if a != b and mentions(a, b)]


def test_knowledge_updates_have_an_earlier_old_value(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        turns = conversation.turns
        position = {t.turn_id: n for n, t in enumerate(turns)}
        for question in (q for q in conversation.questions if q.category == KNOWLEDGE_UPDATE):
            (evidence,) = question.evidence
            newest = turns[position[evidence]]
            assert mentions(newest.text, question.answer)
            pool = next(pool for pool in UPDATE_POOLS if question.answer in pool)
            earlier = [t for t in turns[: position[evidence]] if t.speaker == newest.speaker]
            old_values = {v for v in pool if v != question.answer for t in earlier if mentions(t.text, v)}
            assert old_values, f"no earlier distractor for {question}"
            # The newest value is not stated before the update.
            assert not any(mentions(t.text, question.answer) for t in earlier)


def test_temporal_answers_match_session_dates(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        time_of = {t.turn_id: datetime.fromisoformat(t.time) for t in conversation.turns}
        for question in (q for q in conversation.questions if q.category == TEMPORAL):
            (evidence,) = question.evidence
            assert question.answer == time_of[evidence].strftime("%B %Y")


def test_unanswerable_questions_are_never_answered(conversations: list[Conversation]) -> None:
    keywords = {wording.split("{name}")[-1]: keyword for wording, keyword in WORDS.unanswerable}
    for conversation in conversations:
        dialogue = " ".join(t.text for t in conversation.turns)
        for question in (q for q in conversation.questions if q.category == UNANSWERABLE):
            assert question.evidence == ()
            assert not question.answerable
            assert question.time == conversation.sessions[-1].time
            keyword = next(k for tail, k in keywords.items() if question.question.endswith(tail))
            assert not mentions(dialogue, keyword)


def test_questions_are_asked_after_their_evidence(conversations: list[Conversation]) -> None:
    for conversation in conversations:
        time_of = {t.turn_id: datetime.fromisoformat(t.time) for t in conversation.turns}
        session_times = [datetime.fromisoformat(s.time) for s in conversation.sessions]
        for question in conversation.questions:
            assert question.time is not None
            asked = datetime.fromisoformat(question.time)
            if question.evidence:
                last = max(time_of[e] for e in question.evidence)
                assert asked > last
                # Asked before the next session, so the state it asks about is the one just seen.
                assert all(asked < t for t in session_times if t > last)


def test_facts_are_deterministic() -> None:
    assert generate_facts(seed=1, n_edits=20) == generate_facts(seed=1, n_edits=20)
    assert generate_facts(seed=1, n_edits=20) != generate_facts(seed=2, n_edits=20)
    assert generate_facts(seed=1, n_edits=30)[:20] == generate_facts(seed=1, n_edits=20)


def test_facts_are_well_formed() -> None:
    edits = generate_facts()
    assert len(edits) == 100
    assert [e.edit_id for e in edits] == [f"fact-{i}" for i in range(100)]
    assert len({e.subject for e in edits}) == 100
    assert len({e.relation for e in edits}) >= 5
    for edit in edits:
        assert edit.target_old and edit.target_new and edit.target_old != edit.target_new
        for target in (edit.target_old, edit.target_new):
            assert target == target.strip() and 1 <= len(target.split()) <= 3
        prompts = (edit.prompt, *edit.paraphrases)
        assert len(edit.paraphrases) >= 2 and len(set(prompts)) == len(prompts)
        assert all(edit.subject in p and not p.endswith(" ") for p in prompts)
        assert len(edit.locality) >= 2
        for probe in edit.locality:
            assert probe.answer and edit.subject not in probe.prompt
            assert edit.target_new.lower() not in f"{probe.prompt} {probe.answer}".lower()
        assert all(edit.subject in p.prompt and p.answer for p in edit.portability)
        assert edit.metadata["source"] == "synthetic"
    assert sum(bool(e.portability) for e in edits) >= 30


def test_fact_count_is_honoured_up_to_the_subject_pools() -> None:
    assert len(generate_facts(n_edits=1)) == 1
    largest = sum(len(pool) for pool in synthetic._subject_pools().values())
    assert len({e.subject for e in generate_facts(n_edits=largest)}) == largest
    with pytest.raises(ConfigError, match=f"n_edits.*1 and {largest}"):
        generate_facts(n_edits=largest + 1)


@pytest.mark.parametrize(
    ("function", "argument", "value"),
    [
        (generate_dialogues, "n_conversations", 0),
        (generate_dialogues, "n_sessions", -1),
        (generate_dialogues, "turns_per_session", 0),
        (generate_dialogues, "n_sessions", 2.5),
        (generate_facts, "n_edits", 0),
        (generate_facts, "n_edits", -5),
    ],
)
def test_bad_counts_raise_config_error(function, argument: str, value: object) -> None:
    with pytest.raises(ConfigError, match=argument):
        function(**{argument: value})


def test_too_few_turns_for_the_facts_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="turns_per_session"):
        generate_dialogues(n_sessions=1, turns_per_session=16)
    conversation = generate_dialogues(n_conversations=1, n_sessions=2, turns_per_session=15)[0]
    assert set(Counter(q.category for q in conversation.questions)) == CATEGORIES


def test_hydra_configs_instantiate() -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    for name, overrides, expected in (
        ("synthetic_dialogues", {"n_conversations": 1}, generate_dialogues(seed=5, n_conversations=1)),
        ("synthetic_facts", {"n_edits": 3}, generate_facts(seed=5, n_edits=3)),
    ):
        dataset = group_config("dataset", name)  # its schema merged in, as `dataset=NAME` composes it
        config = omegaconf.OmegaConf.create({"seed": 5, "dataset": omegaconf.OmegaConf.to_container(dataset)})
        assert hydra_utils.instantiate(config.dataset, **overrides) == expected


def digest(records: list) -> str:
    return hashlib.sha256(json.dumps([dataclasses.asdict(r) for r in records], sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: generate_dialogues(), "4d0818dd6aacf7b9f5c30f0cdb91aa3ddbe6f2009f66b2cb44c731efba034b07"),
        (
            lambda: generate_dialogues(seed=3, n_conversations=2, n_sessions=4, turns_per_session=10),
            "c72b614e3192736014848e286d9c30d6d29265d89df4ffdaeaaeeb482f23be9e",
        ),
        (lambda: generate_facts(), "ba9e310437146df6b3a575a3ad26c8dd4d1cbedde0dee6f70c84a8c9e015412c"),
        (
            lambda: generate_facts(seed=7, n_edits=300),
            "f4ad8fde86f3a687518d9fd6f3d99bbcf5e63085986f5881ba9a9d023d56227f",
        ),
    ],
)
def test_the_datasets_are_the_records_they_always_were(make, expected):
    # Hashes of the records generated when the word tables were still in the code (before they moved to
    # synthetic_words.json): a change to the tables or to the generators' draws changes every result built on them.
    assert digest(make()) == expected
