"""Configs describe their fields: the browser check reads what each field holds and refuses one that does not say."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest

from cai_core.config import ConfigError, browser_value, field_kind
from cai_core.train import KINDS, config_class
from cai_core.train.sft import SFTConfig


def typed_text_fields(cls) -> list[dataclasses.Field]:
    """The fields the Train page shows as a free-text box (str, or str or None)."""
    hints = typing.get_type_hints(cls)
    return [f for f in dataclasses.fields(cls) if hints[f.name] in (str, str | None)]


@pytest.mark.parametrize("kind", KINDS)
def test_every_text_field_of_a_training_config_says_what_it_holds(kind):
    unmarked = [f.name for f in typed_text_fields(config_class(kind)) if field_kind(f) is None]
    assert unmarked == []


def test_a_new_path_field_nobody_marked_is_refused_from_the_browser(workspace, tmp_path):
    @dataclass
    class WithCache(SFTConfig):
        cache_file: str = field(default="", metadata={"help": "Where the tokenised data is kept."})

    outside = str(tmp_path.parent / "elsewhere.jsonl")
    with pytest.raises(ConfigError, match="cache_file: cannot be typed in the browser") as refused:
        browser_value(WithCache, "cache_file", outside, workspace, [])
    assert refused.value.field == "cache_file"
    # the marked fields beside it are held to the workspace as before
    with pytest.raises(ConfigError, match="dataset: .*outside the workspace"):
        browser_value(WithCache, "dataset", outside, workspace, [])
    assert browser_value(WithCache, "dataset", "store", workspace, []) == "store"
    assert browser_value(WithCache, "lora_target_modules", "q_proj,v_proj", workspace, []) == "q_proj,v_proj"


def test_starting_from_sft_and_needing_a_reward_model_are_the_configs_own():
    assert [k for k in KINDS if config_class(k).starts_from_sft] == ["ppo", "dpo", "grpo", "rloo"]
    assert [k for k in KINDS if config_class(k).needs_reward_model] == ["ppo", "grpo", "rloo"]


def job_configs_with_a_bad_value():
    from cai_core.ab import ABConfig, ABJudgeConfig
    from cai_core.bench import BenchConfig
    from cai_core.critique import GenerateConfig
    from cai_core.evaluation import EvalConfig, RoundsConfig
    from cai_core.feedback import LabelConfig
    from cai_core.pairs import SampleConfig

    return [
        (GenerateConfig, {"constitution": "c.yaml", "prompts": "p.jsonl"}, "chunk_size", 0),
        (GenerateConfig, {"constitution": "c.yaml", "prompts": "p.jsonl"}, "limit", 0),
        (SampleConfig, {"prompts": "p.jsonl"}, "k", 1),
        (LabelConfig, {"constitution": "c.yaml"}, "batch_size", 0),
        (EvalConfig, {"models": ["default"]}, "max_new_tokens", 0),
        (RoundsConfig, {"traces_run": "gen-1"}, "batch_size", 0),
        (ABConfig, {"constitution_a": "a.yaml", "constitution_b": "b.yaml"}, "limit", 0),
        (ABJudgeConfig, {"constitution": "c.yaml"}, "batch_size", 0),
        (BenchConfig, {}, "new_tokens", 0),
        (config_class("sft"), {}, "max_steps", 0),
    ]


@pytest.mark.parametrize(("cls", "given", "name", "bad"), job_configs_with_a_bad_value())
def test_a_job_config_with_a_bad_value_fails_when_it_is_made_naming_the_field(cls, given, name, bad):
    cls(**given)  # the rest is valid
    with pytest.raises(ConfigError, match=f"^{name}: is {bad}: it must be at least") as refused:
        cls(**given, **{name: bad})
    assert refused.value.field == name


def test_a_config_file_is_read_strictly_and_its_unknown_fields_named(tmp_path):
    from cai_core.train import TrainError, load_config_file

    path = tmp_path / "sft.yaml"
    path.write_text("model: &m default\nhelpful_data: *m\n")
    with pytest.raises(TrainError, match=r"sft.yaml, line 2: YAML aliases"):
        load_config_file(config_class("sft"), path)
    path.write_text("learning_rate: 1e-5\nmax_stepz: 3\n")
    with pytest.raises(TrainError, match=r"sft.yaml: unknown sft config field\(s\): max_stepz; known: "):
        load_config_file(config_class("sft"), path)
    with pytest.raises(TrainError, match="no such sft config file"):
        load_config_file(config_class("sft"), tmp_path / "absent.yaml")
