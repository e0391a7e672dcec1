"""zsRE, CounterFact and JSONL knowledge-update files -> KnowledgeEdit records, and their bad-input errors."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from memos_lab.data.knowledge import edit_to_record, load_counterfact, load_facts, load_zsre
from memos_lab.data.schema import LocalityProbe
from memos_lab.data.synthetic import generate_facts
from memos_lab.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def test_zsre_maps_src_to_alt_with_rephrase_and_loc():
    first, second = load_zsre(str(FIXTURES / "zsre_tiny.json"))
    assert first.prompt == "What university did Watts Humphrey attend?"
    assert first.target_new == "University of Michigan"
    assert first.target_old == "Illinois Institute of Technology"
    assert first.paraphrases == ("What university did Watts Humphrey take part in?",)
    assert first.locality == (
        LocalityProbe("nq question: who played desmond doss father in hacksaw ridge", "Hugo Weaving"),
    )
    assert second.subject == "Ramalinaceae" and second.edit_id == "zsre-1"


def test_counterfact_fills_the_subject_into_the_prompt():
    (edit,) = load_counterfact(str(FIXTURES / "counterfact_tiny.json"))
    assert edit.prompt == "The mother tongue of Danielle Darrieux is"
    assert (edit.target_new, edit.target_old) == ("English", "French")
    assert len(edit.paraphrases) == 2 and edit.relation == "P103"
    # neighbours should keep their true answer
    assert edit.locality[1] == LocalityProbe("The native language of Montesquieu is", "French")


def test_missing_key_names_the_record_and_the_key(tmp_path):
    records = json.loads((FIXTURES / "zsre_tiny.json").read_text())
    del records[1]["alt"]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"zsRE record 1: missing key 'alt'"):
        load_zsre(str(path))


def test_counterfact_missing_nested_key_and_template_without_slot(tmp_path):
    record = json.loads((FIXTURES / "counterfact_tiny.json").read_text())[0]
    del record["requested_rewrite"]["target_new"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=r"record 0: missing key 'requested_rewrite.target_new.str'"):
        load_counterfact(str(path))
    record = json.loads((FIXTURES / "counterfact_tiny.json").read_text())[0]
    record["requested_rewrite"]["prompt"] = "The mother tongue is"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match="no \\{\\}"):
        load_counterfact(str(path))


def test_unreadable_or_absent_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no file"):
        load_zsre(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_zsre(str(bad))
    bad.write_text(" null\n")  # crashed the process in the `datasets` JSON reader (found by the fuzz campaign)
    with pytest.raises(DataError, match="a JSON array or JSON lines of objects expected"):
        load_counterfact(str(bad))


def test_jsonl_facts_round_trip_our_schema(tmp_path):
    edits = generate_facts(seed=0, n_edits=3)
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(edit_to_record(e)) + "\n" for e in edits))
    assert load_facts(str(path)) == edits


def test_jsonl_facts_need_a_target(tmp_path):
    record = edit_to_record(replace(generate_facts(seed=0, n_edits=1)[0]))
    del record["target_new"]
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match="record 0: missing key 'target_new'"):
        load_facts(str(path))


def test_zsre_copes_with_real_file_quirks():
    # leading spaces in alt, a subject asked about twice, answers as a string, nested or empty lists
    edits = load_zsre(str(FIXTURES / "zsre_quirks.json"))
    assert [e.target_new for e in edits] == ["1921", "architect", "Hundred Years' War", "Cape Canaveral"]
    assert [e.target_old for e in edits] == ["1922", "designer", "Napoleonic Wars", None]
    assert [e.subject for e in edits[:2]] == ["Leslie Buck", "Leslie Buck"] and len({e.edit_id for e in edits}) == 4
