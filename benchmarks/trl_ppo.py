"""TRL 1.12's experimental PPOTrainer on bench_train.py's PPO configuration: the other side of its comparison.

    PYTHON benchmarks/trl_ppo.py SPEC.json

PYTHON has TRL 1.12 (the last release with a PPOTrainer; not a project dependency), so this file imports nothing
of the project. SPEC names the policy and reward model folders, the prompts and the PPO settings; one JSON line
comes back: TRL's version, the seconds of `trainer.train()`, and the mean reward of each step. The value model
starts from the reward model and the reference is a second copy of the policy, as in our PPO without LoRA.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    chats = [[{"role": "user", "content": prompt}] for prompt in spec["prompts"]]
    texts = tokenizer.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    prompts = Dataset.from_dict({"input_ids": tokenizer(texts, add_special_tokens=False).input_ids})
    batch = spec["batch_size"]
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-ppo-"),
        per_device_train_batch_size=batch,
        local_rollout_forward_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=spec["ppo_epochs"],
        total_episodes=spec["steps"] * batch,
        response_length=spec["max_new_tokens"],
        temperature=spec["temperature"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",  # ours keeps the rate constant
        kl_coef=spec["kl_coef"],
        stop_token="eos",
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=spec["seed"],
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(spec["model"]),
        ref_model=AutoModelForCausalLM.from_pretrained(spec["model"]),
        reward_model=AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1),
        train_dataset=prompts,
    )
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    rewards = [entry["objective/scores"] for entry in trainer.state.log_history if "objective/scores" in entry]
    print(json.dumps({"trl": trl.__version__, "train_seconds": seconds, "rewards": rewards}))


if __name__ == "__main__":
    main()
