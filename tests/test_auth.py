"""Roles in the library: in a process that serves logins, only an operator may take an operator-only action,
whatever the page shows; nobody resolved is nobody allowed; the command line is the operator. Imports record
who imported, and never replace a label someone saved."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from cai_core import auth, jobs
from cai_core.auth import (
    ANNOTATOR,
    IDENTITY_KEY_ENV,
    LOGINS_FILE,
    OPERATOR,
    Access,
    Actor,
    NotAllowed,
    add_login,
    current_actor,
    require_operator,
    sign_identity,
    verify_identity,
)
from cai_core.constitution import load_constitution, save_constitution
from cai_core.exports import export_bytes, write_export
from cai_core.jobs import JobFolder
from cai_core.pairs import import_labels
from cai_core.records import HumanLabel, Pair
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT, Workspace

ADA = Actor("ada", ANNOTATOR)
OLIVE = Actor("olive", OPERATOR)


@pytest.fixture
def acting(monkeypatch):
    """Make this process one that serves logins, with `acting(actor)` choosing who the resolver names."""
    monkeypatch.setenv(IDENTITY_KEY_ENV, "test-key")
    who: list[Actor | None] = [None]
    monkeypatch.setattr(auth, "_resolver", lambda: who[0])

    def act(actor: Actor | None) -> None:
        who[0] = actor

    return act


def test_an_annotator_may_take_no_operator_action_in_the_library(acting, tmp_path):
    acting(ADA)
    constitution_file = tmp_path / "c.yaml"
    constitution = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    job = JobFolder.create(tmp_path / "runs", "r1", {"kind": "generate"})
    labels_file = tmp_path / "labels.csv"
    labels_file.write_text("pair_id,label,annotator\nx,a,bob\n")
    with Store.open(Workspace(tmp_path)) as store:
        refused = {
            "save a constitution": lambda: save_constitution(constitution, constitution_file),
            "start r1": lambda: jobs.launch(job, Workspace(tmp_path)),
            "cancel r1": job.request_cancel,
            "import labels": lambda: import_labels(store, labels_file, importer="ada"),
            "export data": lambda: export_bytes(pd.DataFrame(), "jsonl"),
        }
        for action, attempt in refused.items():
            with pytest.raises(NotAllowed, match=f"{action}: operators only \\(ada is logged in as an annotator\\)"):
                attempt()
    with pytest.raises(NotAllowed):
        write_export(pd.DataFrame(), tmp_path / "out.jsonl", "jsonl")
    assert (
        not constitution_file.exists() and not (job.path / "cancel").exists() and not (tmp_path / "out.jsonl").exists()
    )
    assert not (job.path / "log.txt").exists()  # no process was started


def test_nobody_resolved_is_nobody_allowed_and_the_command_line_is_the_operator(acting, monkeypatch, tmp_path):
    acting(None)
    with pytest.raises(NotAllowed, match="save a constitution: nobody is logged in"):
        require_operator("save a constitution")
    acting(OLIVE)
    assert require_operator("save a constitution") == OLIVE
    monkeypatch.setattr(auth, "_resolver", None)  # no UI registered at all: still nobody
    assert current_actor() is None
    monkeypatch.delenv(IDENTITY_KEY_ENV)  # the command line
    assert current_actor() == auth.LOCAL_OPERATOR


def test_a_job_started_from_the_app_does_not_serve_logins(acting, tmp_path):
    acting(OLIVE)
    job = JobFolder.create(tmp_path / "runs", "r1", {"kind": "generate"})
    process = job.start(["sh", "-c", f"echo ${IDENTITY_KEY_ENV}-"])
    process.wait(timeout=10)
    assert (job.path / "log.txt").read_text().strip() == "-"


def test_the_identity_header_is_verified_and_a_forged_one_names_nobody():
    value = sign_identity(Actor("zoë;x", OPERATOR), "key")
    assert verify_identity(value, "key") == Actor("zoë;x", OPERATOR)
    assert verify_identity(value, "another key") is None
    assert verify_identity(value.replace("operator", "annotator"), "key") is None
    assert verify_identity("olive;operator;" + "0" * 64, "key") is None
    assert verify_identity(None, "key") is None


def test_logins_have_roles_and_files_before_roles_read_as_annotators(tmp_path):
    ada_password = add_login(tmp_path, "ada")
    olive_password = add_login(tmp_path, "olive", OPERATOR)
    stored = json.loads((tmp_path / LOGINS_FILE).read_text())
    assert stored["olive"]["role"] == OPERATOR and ada_password not in json.dumps(stored)
    access = Access(True, None, tmp_path / LOGINS_FILE)
    assert access.login("ada", ada_password) == Actor("ada", ANNOTATOR)
    assert access.login("olive", olive_password) == Actor("olive", OPERATOR)
    stored["old"] = stored["ada"]["hash"]  # as `cai app --add-login` wrote it before roles
    (tmp_path / LOGINS_FILE).write_text(json.dumps(stored))
    assert access.login("old", ada_password) == Actor("old", ANNOTATOR)
    with pytest.raises(ValueError, match="role 'admin'"):
        add_login(tmp_path, "eve", "admin")


def test_an_unknown_name_runs_the_same_password_check_as_a_known_one(tmp_path, monkeypatch):
    """Names cannot be told apart by timing: a refusal costs one scrypt check either way (before: a known name
    took 440 ms to refuse and an unknown one 0 ms)."""
    add_login(tmp_path, "ada")
    access = Access(True, auth.hash_secret("token"), tmp_path / LOGINS_FILE)
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(k["n"]) or real(*a, **k))
    auth._dummy_hash(auth.SCRYPT_N)  # made once, at the first unknown name: not part of what is counted
    for name in ("ada", "nobody", ""):
        calls.clear()
        assert access.login(name, "wrong") is None
        assert calls == [auth.SCRYPT_N], name


def labelled_pair(store) -> str:
    store.add_pairs([Pair("p1", "prompt", "a", "b", "import", "f", 1, "x", "y")])
    return "p1"


def test_an_import_records_its_importer_and_never_replaces_a_label_someone_saved(tmp_path):
    with Store.open(Workspace(tmp_path)) as store:
        pair_id = labelled_pair(store)
        store.save_human_label(HumanLabel(pair_id, "bob", "a"))
        labels = tmp_path / "labels.csv"
        labels.write_text(f"pair_id,label,annotator\n{pair_id},b,bob\n{pair_id},tie,cy\n")
        result = import_labels(store, labels, importer="olive")
        assert (result.labels_added, result.labels_kept) == (1, 1)
        saved = {label.annotator: label for label in store.human_labels(pair_id=pair_id)}
        assert (saved["bob"].choice, saved["bob"].imported_by) == ("a", "")  # bob's own label stands
        assert (saved["cy"].choice, saved["cy"].imported_by) == ("tie", "olive")
        labels.write_text(f"pair_id,label,annotator\n{pair_id},a,cy\n")
        assert import_labels(store, labels, importer="olive").labels_added == 1  # olive corrects her own import
        assert import_labels(store, labels, importer="pat").labels_kept == 1
        assert store.human_labels(pair_id=pair_id, annotator="cy")[0].choice == "a"
        store.save_human_label(HumanLabel(pair_id, "cy", "b"))  # cy edits it in the app: it is cy's now
        assert import_labels(store, labels, importer="olive").labels_kept == 1
        assert store.human_labels(pair_id=pair_id, annotator="cy")[0].choice == "b"


def test_the_logins_file_is_written_owner_only_through_a_fresh_temporary_file(tmp_path):
    """A link planted where the old write put its fixed `.tmp` file is not written through (the hashes would land
    in the link's target), and the logins file is the owner's alone however it was before."""
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    data = tmp_path / "data"
    data.mkdir()
    (data / LOGINS_FILE).with_suffix(".tmp").symlink_to(outside)
    (data / LOGINS_FILE).write_text("{}")
    (data / LOGINS_FILE).chmod(0o644)
    add_login(data, "ada")
    assert outside.read_text() == "untouched"
    assert (data / LOGINS_FILE).stat().st_mode & 0o777 == 0o600
    assert "ada" in json.loads((data / LOGINS_FILE).read_text())
