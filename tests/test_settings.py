"""The shared settings machinery: type checks, validators, unknown keys, and the CLI's check before a job."""

from __future__ import annotations

import pytest

from memos_lab.cli import validate_overrides
from memos_lab.errors import ConfigError
from memos_lab.memory.parametric.lora import LoRASettings
from memos_lab.memory.textual.general_text import GeneralTextSettings
from memos_lab.memory.textual.vector import VectorSettings
from memos_lab.scheduler.memos import MemOSSettings
from memos_lab.scheduler.recency import RecencyPolicy, RecencySettings


@pytest.mark.parametrize("value", [True, "16", None, float("nan")])
def test_a_value_of_the_wrong_type_names_the_field(value):
    with pytest.raises(ConfigError, match=r"^scheduler\.half_life must be a (positive )?number, got "):
        RecencySettings(half_life=value)


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"scheduler: unknown setting\(s\) \['half_lif'\]; valid: \['half_life'\]"):
        RecencyPolicy(half_lif=3)


def test_settings_are_frozen_and_lists_become_tuples():
    settings = MemOSSettings.from_mapping({"relevance_weight": 1, "keyword_weight": 0, "usage_weight": 0})
    with pytest.raises(AttributeError):
        settings.relevance_weight = 2  # type: ignore[misc]
    assert settings.to_dict() == {"relevance_weight": 1, "keyword_weight": 0, "usage_weight": 0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scheduler.usage_weight=-1"], r"scheduler\.usage_weight must be a non-negative number, got -1"),
        (
            ["scheduler=recency", "scheduler.half_life=abc"],
            r"scheduler.half_life='abc': scheduler.half_life takes a number \(its default is 16.0\)",
        ),
        (["scheduler.usage_weigth=1"], r"Could not override 'scheduler\.usage_weigth'"),
    ],
)
def test_the_cli_refuses_a_bad_setting_before_any_job(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_overrides(overrides)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LoRASettings(steps=True), r"parametric\.steps must be an integer, got True"),
        (lambda: LoRASettings(dropout=1.0), r"parametric\.dropout must be a number in \[0, 1\), got 1\.0"),
        (lambda: VectorSettings(rrf_k=-5), r"memory\.rrf_k must be a non-negative integer, got -5"),
        (lambda: VectorSettings(lexical_weight=-1), r"memory\.lexical_weight must be a non-negative number, got -1"),
        (lambda: GeneralTextSettings(fusion="max"), r"memory\.fusion: unknown 'max'; valid: rrf, bm25, dense"),
    ],
)
def test_the_shared_validators_name_the_field_and_what_is_valid(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
