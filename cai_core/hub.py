"""Pushing an export (SFT, pairs, preferences) or a trained model to a Hugging Face Hub repository.

A repository is created private unless asked otherwise, and gets a card saying what the data is: the constitution
(name and version) it was made under and, for labelled data, the label run and its judge's reliability verdict
(`agreement.label_run_verdict`), so whoever downloads it knows how far to trust the labels. The workbench is
offline by default (HF_HUB_OFFLINE=1): a push is the operator's explicit choice and needs HF_HUB_OFFLINE=0, a token
(HF_TOKEN, or the one `hf auth login` saved) and a network; HF_ENDPOINT points it at another Hub. All three come from
where the app or the command runs, never from a page: the pages only name the repository."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .auth import require_operator
from .exports import ExportFormat, load_export, write_export


class HubError(ValueError):
    """A push cannot start: offline, no token, or nothing to push; the message says which."""


@dataclass(frozen=True)
class Provenance:
    """What the card says about where the data came from."""

    constitutions: list[str]  # "name version" each, or the versions alone where rows carry no name
    label_runs: list[str]
    verdicts: dict[str, str]  # label run -> its judge's verdict headline


def dataset_card(repo_id: str, kind: str, rows: int, provenance: Provenance) -> str:
    """The dataset's README.md: Hub metadata, then the provenance in words."""
    constitutions = ", ".join(provenance.constitutions) or "none recorded"
    lines = [
        "---",
        "tags:",
        "- constitutional-ai",
        "- cai-workbench",
        f"- {kind}",
        "---",
        f"# {repo_id}",
        "",
        f"A `{kind}` export of the Constitutional AI workbench: {rows} rows, in the format TRL's trainers read.",
        "",
        f"- Constitution: {constitutions}",
    ]
    for run in provenance.label_runs:
        lines.append(
            f"- Label run `{run}`: the judge's reliability verdict is {provenance.verdicts.get(run, 'unknown')}"
        )
    if not provenance.label_runs:
        lines.append("- Labels: none (the rows are revisions, not judged preferences)")
    return "\n".join(lines) + "\n"


def export_provenance(rows: pd.DataFrame, store=None) -> Provenance:
    """The constitutions and label runs an export's rows name, with each label run's verdict from the store."""
    versions = sorted(set(rows["constitution_version"].dropna())) if "constitution_version" in rows else []
    label_runs = sorted({run for run in rows.get("labels", pd.Series(dtype=str)).dropna() if run != "human"})
    verdicts, constitutions = {}, list(versions)
    if store is not None:
        from .agreement import label_run_verdict

        named = store.runs("label").set_index("run_id")
        for run in label_runs:
            verdicts[run] = label_run_verdict(store, run).headline()
            if run in named.index:
                constitutions.append(f"{named.at[run, 'constitution_name']} {named.at[run, 'constitution_version']}")
    return Provenance(sorted(set(constitutions)), label_runs, verdicts)


def hub_token() -> str | None:
    """The operator's Hub token: HF_TOKEN, else the one `hf auth login` saved."""
    from huggingface_hub import get_token

    return get_token()


def cannot_push(token: str | None) -> str | None:
    """Why a push cannot start here, in words that say how to turn it on; None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "the workbench is offline (HF_HUB_OFFLINE=1): set HF_HUB_OFFLINE=0 to push to the Hub"
    if not token:
        return "pushing needs a Hub token with write access (HF_TOKEN, `hf auth login`, or --token)"
    return None


def _api(token: str | None):
    from huggingface_hub import HfApi

    if reason := cannot_push(token):
        raise HubError(reason)
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def push(path: str | Path, repo_id: str, card: str, *, token: str | None, repo_type: str, private: bool = True) -> str:
    """Create the repository (private by default) and upload the file or folder and its card in one commit;
    returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd

    require_operator("push to the Hub")
    path = Path(path)
    if not path.exists():
        raise HubError(f"{path}: no such file or folder to push")
    api = _api(token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    base = path if path.is_dir() else path.parent
    operations = [CommitOperationAdd(str(f.relative_to(base)), str(f)) for f in files if f.name != "README.md"]
    operations.append(CommitOperationAdd("README.md", card.encode()))
    commit = api.create_commit(repo_id, operations, commit_message="Upload from the CAI workbench", repo_type=repo_type)
    return commit.commit_url


def push_export(
    path: str | Path, repo_id: str, kind: str, *, token: str | None, store=None, private: bool = True
) -> str:
    """Push an export with its dataset card (constitution version, label runs and their verdicts)."""
    dataset = load_export(path)
    rows = dataset.to_pandas()
    card = dataset_card(repo_id, kind, len(rows), export_provenance(rows, store))
    return push(path, repo_id, card, token=token, repo_type="dataset", private=private)


def write_and_push_export(
    rows: pd.DataFrame,
    path: Path,
    fmt: ExportFormat,
    kind: str,
    repo_id: str,
    *,
    token: str | None,
    store,
    private=True,
) -> str:
    """What the Data page's Hub button does: write the export where its Write button would, then push it with its
    card. Nothing is written when the push cannot start."""
    if reason := cannot_push(token):
        raise HubError(reason)
    write_export(rows, path, fmt)
    return push_export(path, repo_id, kind, token=token, store=store, private=private)


def model_card(repo_id: str, run: dict) -> str:
    """A trained model's README.md: what it was trained from, how, and under which constitution."""
    constitution = run.get("constitution") or {}
    return (
        f"---\ntags:\n- constitutional-ai\n- cai-workbench\n- {run['kind']}\n---\n# {repo_id}\n\n"
        f"Trained by the Constitutional AI workbench: run `{run['run_id']}` ({run['kind']}) from `{run['model']}`."
        f"\n\n- Constitution: {constitution.get('name', 'none recorded')} {constitution.get('version', '')}\n"
    )


def push_model(job, repo_id: str, *, token: str | None, private: bool = True) -> str:
    """Push a finished training run's model folder (final/) with its model card."""
    final = job.path / "final"
    if not final.is_dir():
        raise HubError(f"run {job.run_id} has no finished model ({final} is absent)")
    return push(final, repo_id, model_card(repo_id, job.spec), token=token, repo_type="model", private=private)
