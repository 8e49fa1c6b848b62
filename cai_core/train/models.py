"""The models a run reads and writes: a model spec resolved to a folder, a reward (a model or a
`module:function`), checkpoints, and the finished model's folder."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..workspace import Workspace
from .config import RUN_ID, LoraOptions, TrainError


def finished_model(run_folder: Path) -> Path | None:
    """A run's trained model folder, once it is finished: `final/` is renamed into place whole, so its
    config.json is there only when every file is."""
    final = Path(run_folder) / "final"
    return final if (final / "config.json").exists() else None


def checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-<step>` folders under `folder`, oldest step first (half-written `.tmp` ones aside)."""
    steps = {p: p.name.removeprefix("checkpoint-") for p in Path(folder).glob("checkpoint-*")}
    return sorted((p for p, step in steps.items() if step.isdigit()), key=lambda p: int(steps[p]))


def resolve_model(spec: str, ws: Workspace) -> str:
    """A model spec as a folder transformers can load: default, a finished run's id, or a path."""
    if spec == "default":
        from ..backends import ensure_default_model

        return str(ensure_default_model(ws.models_dir))
    if RUN_ID.match(spec) and (final := finished_model(ws.runs_dir / spec)):
        return str(final)
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not (path / "config.json").exists():
            raise TrainError(f"model {spec}: the folder has no config.json, so it is not a transformers model")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE", "1") != "0":
        raise TrainError(f"model {spec}: no such folder or finished run (hub ids need HF_HUB_OFFLINE=0)")
    return spec


RewardFn = Callable[..., list[float]]
CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_reward(spec: str, ws: Workspace) -> str | RewardFn:
    """`module:function` is a Python reward `(prompts, completions, **kw) -> list[float]`, as TRL's
    `reward_funcs` take; anything else is a sequence-classification model spec."""
    if not spec:
        raise TrainError("this algorithm needs a reward", "reward_model")
    if is_callable_spec(spec):
        return import_callable(spec, "reward_model")
    return resolve_model(spec, ws)


def is_callable_spec(spec: str) -> bool:
    return bool(CALLABLE_SPEC.match(spec)) and not Path(spec).exists()


def import_callable(spec: str, field: str) -> Callable:
    """`module:function`, imported: from the CLI and config files only, since importing runs the module's code."""
    module, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainError(f"{spec}: {exc}", field) from None
    if not callable(fn):
        raise TrainError(f"{spec}: not callable", field)
    return fn


def check_lora_targets(config: LoraOptions, ws: Workspace) -> None:
    """Refuse, before anything starts, LoRA modules the model does not have (built on the meta device: no
    weights are read)."""
    if not config.lora or config.lora_targets == "all-linear":
        return
    model_path = resolve_model(config.model, ws)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in config.lora_targets if t not in linear]
    if missing or not config.lora_targets:
        raise TrainError(
            f"{', '.join(missing) or 'none given'}: not linear modules of {model_path}; it has "
            f"{', '.join(sorted(linear))}",
            "lora_target_modules",
        )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
