"""The CAI recipe: the seed's protocol (alternate SL-CAI and RL-CAI, KL to the SFT model) as one resumable run.

A recipe is a typed config saved as YAML beside its outputs. Each iteration runs, as ordinary jobs:

    generate (SL-CAI on the current policy) -> sft (on the revisions)            [stop_after: sft ends here]
    -> pairs (sampled from the SFT model) -> label (the AI judge, this constitution) -> rm -> rl (PPO, DPO, GRPO
    or RLOO from the SFT model, whose KL keeps it near the SFT model) -> eval (every checkpoint of the iteration,
    the SFT and RL models, against the base and the previous iteration, on the standard sets by default)

and the comparison arms beside it, on the same prompts and budgets:
- `sft-baseline`: standard SFT on the same generation's initial answers (no critique): CAI against plain SFT;
- `rlhf`: the same RL stage against a reward model trained on people's labels: RLAIF against RLHF.

Every stage is a job of its own (its folder, progress, cancel, log), whose run id names the recipe, the iteration
and the stage (`recipe-ab12cd3456-i1-sft`): that is the lineage every table shows. The recipe job runs the stages
one after another in its own process and spools a record per finished stage; rerunning it skips the stages whose
jobs are done and resumes the one that stopped, so a kill at any moment loses at most that stage's batch in flight.
A cancel of the recipe is passed on to the stage that is running.
"""

from .plan import ARMS, RL_KINDS, Checkpoint, Recipe, RecipeConfig, RecipeError, Stage, load_recipe, plan, recipe_of
from .report import frontier, frontier_table, gate_decisions, iteration_summary, report_html
from .stages import RECIPE, stage_table

__all__ = [
    "ARMS",
    "Checkpoint",
    "RECIPE",
    "RL_KINDS",
    "Recipe",
    "RecipeConfig",
    "RecipeError",
    "Stage",
    "frontier",
    "frontier_table",
    "gate_decisions",
    "iteration_summary",
    "load_recipe",
    "plan",
    "recipe_of",
    "report_html",
    "stage_table",
]
