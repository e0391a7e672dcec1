"""LoCoMo and LongMemEval loaders on small hand-written fixtures in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos_lab.data.locomo import load_locomo
from memos_lab.data.longmemeval import load_longmemeval
from memos_lab.data.schema import ADVERSARIAL, KNOWLEDGE_UPDATE, MULTI_HOP, SINGLE_HOP, UNANSWERABLE
from memos_lab.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
LOCOMO = FIXTURES / "locomo_tiny.json"
LONGMEMEVAL = FIXTURES / "longmemeval_tiny.json"


def test_locomo_records_map_onto_the_schema(tmp_path):
    first, second = load_locomo(str(LOCOMO), cache_dir=str(tmp_path))
    assert first.conversation_id == "conv-a" and first.speakers == ("Ana", "Ben")
    assert [s.session_id for s in first.sessions] == ["session_1", "session_2"]
    assert first.sessions[1].time == "2023-06-20T10:04" and first.turns[0].time == "2023-05-08T13:56"
    assert first.turns[2].text == "A blue bowl for my mother. [shares a photo of a photo of a blue ceramic bowl]"
    multi = first.questions[1]
    assert multi.evidence == ("D2:1", "D2:3") and multi.category == MULTI_HOP and multi.category_id == 1
    assert first.questions[0].category == SINGLE_HOP and first.questions[3].answer == "2023"
    adversarial = first.questions[4]
    assert adversarial.category == ADVERSARIAL and not adversarial.answerable and adversarial.answer == "fish"
    assert len(second.turns) == 2 and second.questions[0].evidence == ("D1:1",)
    [plain] = load_locomo(str(LOCOMO), include_captions=False, limit=1, cache_dir=str(tmp_path))
    assert plain.turns[2].text == "A blue bowl for my mother."


def broken_locomo(tmp_path: Path, damage) -> str:
    records = json.loads(LOCOMO.read_text())
    damage(records)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    return str(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: r[0].pop("qa"), r"record 0 \(conv-a\): missing key 'qa'"),
        (lambda r: r[1]["conversation"].pop("speaker_b"), r"record 1 \(conv-b\) conversation: missing key 'speaker_b'"),
        (
            lambda r: r[0]["conversation"]["session_2"][1].pop("dia_id"),
            r"conv-a\) session_2 turn 1: missing key 'dia_id'",
        ),
        (lambda r: r[0]["conversation"].pop("session_2_date_time"), r"missing key 'session_2_date_time'"),
        (lambda r: r[0]["qa"][2].pop("evidence"), r"conv-a\) qa 2: missing key 'evidence'"),
        (lambda r: r[0]["qa"][0].update(category=9), r"qa 0: unknown category 9"),
        (
            lambda r: r[1]["conversation"].update({"session_1_date_time": "yesterday"}),
            r"session_1: unreadable date 'yesterday'",
        ),
        (
            lambda r: r[0]["conversation"].update(session_1=5),
            r"conv-a\) conversation: '?session_1'? must be a list, got int",
        ),
        (lambda r: r[0]["qa"][1].update(evidence="D1:3"), r"conv-a\) qa 1: '?evidence'? must be a list, got str"),
    ],
)
def test_locomo_with_missing_keys_names_the_key_and_record(tmp_path, damage, message):
    with pytest.raises(DataError, match=message):
        list(load_locomo(broken_locomo(tmp_path, damage), cache_dir=str(tmp_path / "cache")))


def test_missing_or_malformed_files_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="no LoCoMo file at"):
        list(load_locomo(str(tmp_path / "nope.json")))
    (tmp_path / "bad.json").write_text("[{not json")
    with pytest.raises(DataError, match="not a readable LoCoMo JSON file"):
        list(load_locomo(str(tmp_path / "bad.json"), cache_dir=str(tmp_path / "cache")))
    (tmp_path / "bad.json").write_text("null")  # crashed the process (pyarrow) before it was refused
    with pytest.raises(DataError, match="is not a LoCoMo file: a JSON array"):
        list(load_locomo(str(tmp_path / "bad.json"), cache_dir=str(tmp_path / "cache")))


def test_longmemeval_records_become_one_conversation_per_question(tmp_path):
    update, abstain, multi = load_longmemeval(str(LONGMEMEVAL), cache_dir=str(tmp_path))
    [question] = update.questions
    assert (
        question.category == KNOWLEDGE_UPDATE and question.evidence == ("s2:0",) and question.time == "2023-06-01T10:00"
    )
    assert update.sessions[1].time == "2023-05-20T02:21" and update.turns[1].speaker == "assistant"
    assert abstain.questions[0].category == UNANSWERABLE and abstain.questions[0].evidence == ()
    assert multi.questions[0].category == MULTI_HOP and multi.questions[0].evidence == (
        "s5:0",
        "s6:0",
    )  # no has_answer marks


def test_longmemeval_missing_key_is_named(tmp_path):
    records = json.loads(LONGMEMEVAL.read_text())
    del records[2]["haystack_sessions"][1][0]["content"]
    (tmp_path / "lme.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 2 \(q3\) session s6 turn 0: missing key 'content'"):
        list(load_longmemeval(str(tmp_path / "lme.json"), cache_dir=str(tmp_path / "cache")))
