"""Fuzzing every artifact kind and input format (memos_lab/fuzz.py): a planted `_target_` or class path in
every manifest field is refused in one line and never run; random damage gives one line or a load, never a
traceback, a code execution, a read outside the sample, a hang or a changed sample.

The default hypothesis profile "ci" is short; `HYPOTHESIS_PROFILE=long` runs thousands of examples, and
`python -m memos_lab.fuzz --examples 5000 --out FILE` runs the campaign the reliability suite records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import memos_lab.fuzz as fuzz
from memos_lab.fuzz import Fuzzer, json_paths, mutate_json, mutations

settings.register_profile("ci", max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
settings.register_profile(
    "long", max_examples=5000, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
# The manifest of each artifact kind (the LoRA manifest holds the gate's settings) and the MOS registry.
MANIFESTS = {
    "cube": "manifest.json",
    "kv_cache": "manifest.json",
    "lora": "manifest.json",
    "stats": "manifest.json",
    "mos_root": "registry.json",
}
PLANTED = [
    {"_target_": "os.makedirs", "name": "PLANTED_DIR"},
    {"nested": [{"_target_": "memos_lab.fuzz.Sentinel"}]},
    "builtins.print",
]


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Fuzzer:
    return Fuzzer(tmp_path_factory.mktemp("fuzz"))


def planted(fuzzer: Fuzzer) -> list[tuple[str, int, object]]:
    cases = []
    for kind, manifest in MANIFESTS.items():
        value = json.loads((fuzzer.samples[kind].path / manifest).read_text())
        cases += [(kind, index, new) for index in range(len(json_paths(value))) for new in PLANTED]
    return cases


def test_a_target_planted_in_any_manifest_field_is_refused_and_never_run(fuzzer: Fuzzer) -> None:
    cases = planted(fuzzer)
    outcomes = [
        fuzzer.run(kind, lambda root, outside, s, i=index, n=new, m=MANIFESTS[kind]: mutate_json(root, m, i, n, False))
        for kind, index, new in cases
    ]
    assert {o.target for o in outcomes} == set(MANIFESTS) and len(outcomes) > 300
    for outcome in outcomes:
        assert not outcome.bad, outcome
        # a `_target_` anywhere is refused; a class path is refused where a class is named, inert text elsewhere
        if "_target_" in outcome.mutation or "nested" in outcome.mutation:
            assert outcome.result == "refused", outcome


@pytest.mark.skipif(PROFILE not in ("ci", "long"), reason="unknown HYPOTHESIS_PROFILE")
def test_random_damage_is_one_line_or_a_load_and_nothing_else(fuzzer: Fuzzer) -> None:
    @settings(settings.get_profile(PROFILE))
    @given(mutations(fuzzer))
    def damaged(case: tuple) -> None:
        outcome = fuzzer.run(*case)
        assert not outcome.bad, outcome

    damaged()


def test_the_campaign_entry_point_writes_the_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz, "build_samples", lambda w: [s for s in _SAMPLES if s.name in ("stats", "jsonl")])
    assert fuzz.main(["--examples", "20", "--no-planted", "--out", str(tmp_path / "fuzz.json")]) == 0
    report = json.loads((tmp_path / "fuzz.json").read_text())
    assert (
        report["examples"] == 20
        and report["raw_tracebacks"] == report["code_executions"] == report["outside_reads"] == 0
    )
    assert report["command"].startswith("python -m memos_lab.fuzz --examples 20")


_SAMPLES: list = []


@pytest.fixture(autouse=True)
def _share_samples(fuzzer: Fuzzer) -> None:
    _SAMPLES[:] = list(fuzzer.samples.values())
