"""mem0 with its own LLM extraction (memory=mem0 memory.infer=true) in the QA protocol, extracting through a real
`transformers serve` process (tests/generation/conftest.py); skipped without the peers extra."""

import importlib.util
import json
from pathlib import Path

import pytest

from memos_lab.experiments import qa

from .test_served_qa import LOCOMO, qa_run

pytestmark = [pytest.mark.served, pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def test_mem0_extraction_through_a_served_model_completes_with_counted_failures(
    served_url: str, tiny_folder: Path, tmp_path: Path
):
    if importlib.util.find_spec("mem0") is None:  # not imported here: the adapter imports it with telemetry off
        pytest.skip('the peers extra: pip install -e ".[peers]"')
    served = ["llm=openai_compatible", f"llm.base_url={served_url}", f"llm.model={tiny_folder}"]
    peer = ["memory=mem0", "memory.infer=true", f"memory.llm_base_url={served_url}", f"memory.llm_model={tiny_folder}",
            "memory.llm_max_tokens=16", f"memory.home={tmp_path}"]  # fmt: skip
    metrics, artifacts = qa_run(*served, *peer)
    # A random tiny model extracts junk or nothing: each turn is one counted outcome, and the run goes on.
    outcomes = ("extracted_items", "empty_extractions", "extraction_failures")
    turns = sum(
        len(session)
        for session in json.loads(LOCOMO.read_text())[0]["conversation"].values()
        if isinstance(session, list)
    )
    assert sum(metrics[f"memory/{name}"] for name in outcomes) == turns
    assert metrics["qa/answer_failures"] == 0 and len(artifacts[qa.ANSWERS_ARTIFACT]["questions"]) == 5
    # mem0's memories carry no evidence ids: no evidence-based score is reported rather than a false zero.
    assert not any(name.startswith("retrieval/") for name in metrics) and "qa/evidence_in_context" not in metrics
