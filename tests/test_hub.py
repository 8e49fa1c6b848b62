"""Pushing exports and trained models to the Hub, against a loopback stand-in of its HTTP API (never the real Hub):
the repository is private by default, and the card names the constitution version and the label run's verdict."""

from __future__ import annotations

import json

import pytest

from cai_core.hub import HubError, Provenance, dataset_card, push_export, push_model
from cai_core.jobs import JobFolder

from .hub_server import StandInHub


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    with StandInHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def write_export(tmp_path):
    path = tmp_path / "preferences.jsonl"
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [], "rejected": [], "labels": "label-1"}
    path.write_text(json.dumps({**row, "constitution_version": "v9"}) + "\n")
    return path


def test_an_export_is_pushed_privately_with_its_card(hub, tmp_path):
    url = push_export(write_export(tmp_path), "me/prefs", "preferences", token="hf_test")
    assert url.startswith(f"{hub.url}/datasets/me/prefs/commit/")
    assert hub.repos == {"dataset/me/prefs": {"visibility": "private"}}
    files = hub.files["dataset/me/prefs"]
    assert json.loads(files["preferences.jsonl"])["constitution_version"] == "v9"
    card = files["README.md"].decode()
    assert "Constitution: v9" in card and "Label run `label-1`" in card
    assert hub.card_metadata == [{"tags": ["constitutional-ai", "cai-workbench", "preferences"]}]
    assert all(headers.get("authorization") == "Bearer hf_test" for _, _, headers in hub.requests)


def test_the_card_names_the_label_runs_verdict():
    provenance = Provenance(["harmless v9"], ["label-1"], {"label-1": "weak: swap consistency 0.61"})
    card = dataset_card("me/prefs", "preferences", 3, provenance)
    assert "Constitution: harmless v9" in card
    assert "Label run `label-1`: the judge's reliability verdict is weak: swap consistency 0.61" in card


def test_a_trained_model_is_pushed_with_its_model_card(hub, tmp_path):
    job = JobFolder.create(
        tmp_path, "sft-1", {"kind": "train-sft", "model": "default", "constitution": {"name": "h", "version": "v2"}}
    )
    (job.path / "final").mkdir()
    (job.path / "final" / "config.json").write_text("{}")
    push_model(job, "me/model", token="hf_test", private=False)
    assert hub.repos == {"model/me/model": {"visibility": "public"}}
    assert "Constitution: h v2" in hub.files["model/me/model"]["README.md"].decode()


def test_offline_or_tokenless_pushes_are_refused_before_any_request(hub, tmp_path, monkeypatch):
    with pytest.raises(HubError, match="needs a Hub token"):
        push_export(write_export(tmp_path), "me/prefs", "preferences", token=None)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=0"):
        push_export(write_export(tmp_path), "me/prefs", "preferences", token="hf_test")
    assert hub.requests == []


def test_cai_push_model_pushes_a_runs_model(hub, tmp_path, capsys):
    from cai_core.cli import main

    job = JobFolder.create(tmp_path / "runs", "sft-2", {"kind": "train-sft", "model": "default"})
    (job.path / "final").mkdir()
    (job.path / "final" / "config.json").write_text("{}")
    assert main(["--data-dir", str(tmp_path), "push-model", "sft-2", "me/m2", "--token", "hf_test"]) == 0
    assert hub.repos == {"model/me/m2": {"visibility": "private"}}
    assert "pushed sft-2's model to me/m2 (private)" in capsys.readouterr().out
