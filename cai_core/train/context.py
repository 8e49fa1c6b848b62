"""`RunContext`: what an algorithm's `train` gets, its job folder, config and workspace, and the services
every algorithm shares: the data snapshot, metrics, progress, checkpoints, the cancel every rank agrees on."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..job_folder import JobFolder, Pace
from ..records import TrainedModel, TrainMetric, to_row
from ..tracking import Tracker, open_tracker
from ..workspace import Workspace, replace_folder
from .config import TrainConfig
from .models import RewardFn, checkpoints


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class RunContext:
    """What an algorithm's `train` gets: its job folder, config, workspace and the harness's services."""

    job: JobFolder
    config: TrainConfig
    ws: Workspace
    callbacks: list = field(default_factory=list)
    reward_fn: RewardFn | None = None
    pace: Pace | None = None  # rate and ETA since this process's first progress report
    warning: str = ""  # the run's latest warning (the reward-hacking monitor's): its message until it ends
    stop_reason: str = ""  # why the run stopped itself before max_steps, if it did
    tracker: Tracker | None = None  # the experiment tracker's run, opened at the first numbers (main rank only)
    tracked_warning: str = ""
    on_progress: Callable[[int, int], None] | None = None  # told each step and the total (the CLI's progress bar)

    @property
    def checkpoints_dir(self) -> Path:
        return self.job.path / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.job.path / "final"

    @property
    def main(self) -> bool:
        return rank() == 0

    def dataset(self, split: str = "train"):
        import datasets

        path = self.job.path / f"data-{split}.jsonl"
        if not path.exists():
            return None
        return datasets.Dataset.from_json(str(path))

    def last_checkpoint(self) -> Path | None:
        found = checkpoints(self.checkpoints_dir)
        return found[-1] if found else None

    def log_metrics(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        rows = [
            to_row(TrainMetric(self.job.run_id, int(step), name, float(value)))
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self.job.append("train_metrics", rows)
        self.track(step, {row["name"]: row["value"] for row in rows})

    def track(self, step: int, metrics: dict[str, float]) -> None:
        """Pass the numbers, and a monitor warning the tracker has not seen, to the run's experiment tracker."""
        self.tracker = self.tracker or open_tracker(self.job, self.ws.root)
        if self.tracker is None:
            return
        self.tracker.log(int(step), metrics)
        if self.warning and self.warning != self.tracked_warning:
            self.tracker.note("monitor_warning", self.warning)
            self.tracked_warning = self.warning

    def end_tracking(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)
            self.tracker = None

    def progress(self, step: int, message: str = "") -> None:
        """Report the step, with the rate since this process began (a resumed run's earlier steps do not count)
        and the ETA it gives."""
        if self.main:
            self.job.set_progress("running", step, self.config.max_steps, message or self.warning, **self.timing(step))
            if self.on_progress:
                self.on_progress(step, self.config.max_steps)

    def timing(self, step: int) -> dict:
        """Progress's unit, rate, ETA and elapsed time at STEP, counted from this process's first report."""
        self.pace = self.pace or Pace(step)
        return {"unit": "step", **self.pace.at(step, self.config.max_steps)}

    def stop_requested(self) -> bool:
        """The cancel file, as every rank agrees on it: one rank stopping alone would leave the others
        waiting for it in the next collective."""
        wanted = self.job.cancel_requested()
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return wanted
        import torch

        flag = torch.tensor([1.0 if wanted else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def report_rank(self, model, step: int) -> None:
        """Every rank says it ran and which weights it ended with (equal on every rank when the gradients were
        synchronised): one line each in ranks.jsonl. The fingerprint reads each tensor's first 4096 values and
        its sum, not every byte (a 7B model's weights would be copied to the CPU); sharded weights (FSDP)
        differ by rank by design and get none."""
        import torch
        import torch.distributed as dist

        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if hasattr(tensor, "to_local"):
                digest = None
                break
            digest.update(name.encode())
            digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
            digest.update(str(torch.sum(tensor.detach(), dtype=torch.float64).item()).encode())
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        weights = digest.hexdigest() if digest else None
        self.job.append("ranks", [{"rank": rank(), "world_size": world, "step": step, "weights": weights}])

    def finish(self, model_path: Path, step: int, message: str = "") -> None:
        if not self.main:
            return
        record = TrainedModel(self.job.run_id, self.job.spec["kind"], str(model_path), self.config.model, step)
        self.job.append("trained_models", [to_row(record)])
        # the rate and elapsed time stay on the finished run's card, as `run_job`'s jobs keep theirs
        self.job.set_progress(
            "done", step, self.config.max_steps, message or f"model in {model_path}", **self.timing(step)
        )
        self.end_tracking("done")

    def cancelled(self, step: int, reason: str = "") -> None:
        if self.main:
            why = reason or self.stop_reason or f"cancelled at step {step}"
            self.job.set_progress("cancelled", step, self.config.max_steps, f"{why}; run it again to resume")
            self.end_tracking("cancelled")


def save_final(ctx: RunContext, model, tokenizer) -> None:
    """A plain transformers folder: LoRA adapters are merged in so that every loader takes it."""
    if not ctx.main:
        return
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    replace_folder(ctx.final_dir, write)
