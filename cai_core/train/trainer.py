"""The TRL / transformers Trainer path: the arguments every TRL trainer here shares, and the callback that
joins a Trainer to the run's job folder (metrics, progress, cancel with a checkpoint)."""

from __future__ import annotations

from collections.abc import Callable

from .config import use_bf16
from .context import RunContext, save_final


def trainer_arguments(ctx: RunContext) -> dict:
    """The TrainingArguments every TRL trainer here shares."""
    import torch

    c = ctx.config
    return {
        # on a CPU, several processes are data parallel (gloo) only when the Trainer is told it runs on the CPU
        "use_cpu": not torch.cuda.is_available(),
        "output_dir": str(ctx.checkpoints_dir),
        "max_steps": c.max_steps,
        "per_device_train_batch_size": c.batch_size,
        "gradient_accumulation_steps": c.grad_accum,
        "learning_rate": c.learning_rate,
        "logging_steps": c.logging_steps,
        "save_strategy": "steps",
        "save_steps": c.save_steps,
        "save_total_limit": 2,
        "seed": c.seed,
        "bf16": use_bf16(c),
        "gradient_checkpointing": c.gradient_checkpointing,
        "report_to": "none",
        "disable_tqdm": True,
    }


def job_callback(ctx: RunContext):
    """Spools every log, keeps progress current and turns the cancel file into a stop with a checkpoint."""
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ctx.progress(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            ctx.log_metrics(state.global_step, logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            ctx.progress(state.global_step)
            if ctx.stop_requested():
                control.should_training_stop = True
                control.should_save = True

    return JobCallback()


def run_trainer(ctx: RunContext, trainer, tokenizer, evaluate: Callable[[], str] | None = None) -> None:
    """Train from the last checkpoint (if any) to max_steps or a cancel, then save the final model.
    `evaluate` runs after training and before the save; what it returns ends up in the run's message."""
    trainer.add_callback(job_callback(ctx))
    for callback in ctx.callbacks:
        trainer.add_callback(callback)
    last = ctx.last_checkpoint()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    step = trainer.state.global_step
    model = trainer.accelerator.unwrap_model(trainer.model)
    ctx.report_rank(model, step)
    if step < ctx.config.max_steps:
        ctx.cancelled(step)
        return
    message = evaluate() if evaluate else ""
    save_final(ctx, model, tokenizer)
    ctx.finish(ctx.final_dir, step, message)
