"""What every page of the app shares: the sidebar settings, the store connection, and safe ways to show text.

Streamlit lists every `pages/*.py` file as a page except `__init__.py`, so the pages' common code lives here
and each page starts with `settings = setup(...)`.

Safety: prompts and model outputs are red-team material, and every other piece of user data (names, ids,
categories, messages) may be hostile too. They are shown with `st.code` / `st.text`, which render text
literally (no markdown, no HTML, no links), or, where only markdown will do (alerts, labels), `md_escape`d.
The one place that builds HTML is the word diff, where every piece of text goes through `html.escape` and the
result goes to `st.html`, which runs no script and, unlike `st.markdown`, never reads the text as markdown (an
escaped `![x](http://...)` stays text, not a remote image).
"""

from __future__ import annotations

import datetime
import html
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cai_core.auth import LOCAL_HOSTS, Access
from cai_core.backends import DEFAULT_MODEL, Chat
from cai_core.endpoints import Endpoint, EndpointError, browser_model_spec, endpoint_choices, load_endpoints
from cai_core.jobs import JobFolder, Progress
from cai_core.store import Store, StoreError
from cai_core.textdiff import side_by_side, word_diff
from cai_core.workspace import OutsideWorkspace, Workspace


@dataclass(frozen=True)
class Settings:
    workspace: Workspace
    model: str
    user: str | None  # who logged in; None where the app asks for no login (on 127.0.0.1)
    endpoints: list[Endpoint]  # the OpenAI-compatible servers the operator listed: the only URLs a page may name

    def model_spec(self, spec: str) -> str:
        """A model typed on a page, checked as the sidebar's is (`browser_model_spec`)."""
        return browser_model_spec(spec, self.workspace, self.endpoints)


OTHER_MODEL = "other…"  # the sidebar's choice that reveals a free-text model spec


def setup(title: str) -> Settings:
    """Configure the page, ask for a login where the server wants one, and draw the shared settings in the
    sidebar; every page calls this first. Nothing a setting names lies outside the workspace."""
    st.set_page_config(page_title=f"{title} · CAI workbench", page_icon=":material/balance:", layout="wide")
    user = require_login()
    env = Workspace.from_env()
    ss = st.session_state
    ss.setdefault("data_dir", str(env.root))
    ss.setdefault("db_path", str(env.db_override or ""))
    ss.setdefault("model_choice", DEFAULT_MODEL)
    ss.setdefault("model_spec", "")
    # Streamlit forgets a widget's value on a page that does not draw it; assigning the value to itself
    # first makes these settings survive every page switch.
    for key in ("data_dir", "db_path", "model_choice", "model_spec"):
        ss[key] = ss[key]
    with st.sidebar:
        st.subheader("Settings")
        st.text_input(
            "Data folder",
            key="data_dir",
            help="Holds the database, job folders and converted models; inside the workspace "
            f"({', '.join(map(str, env.browser_roots))}).",
        )
        st.text_input(
            "Database file",
            key="db_path",
            placeholder="data folder/cai.duckdb",
            help="A .duckdb file inside the workspace. Leave empty to keep the database in the data folder.",
        )
    data_dir, db_path = ss["data_dir"].strip(), ss["db_path"].strip()
    try:
        # what the operator set stays allowed; anything typed here must lie inside the workspace
        root = env.root if data_dir in ("", str(env.root)) else env.resolve_browser_path(data_dir)
        workspace = Workspace(root)
        if db_path:
            same = env.db_override and db_path == str(env.db_override)
            workspace = Workspace(
                root, env.db_override if same else workspace.resolve_browser_path(db_path, suffixes=(".duckdb",))
            )
    except OutsideWorkspace as exc:
        refuse(f"Settings: {exc}")
    with connect(workspace) as store:
        labels = store.model_choices()
    try:
        # the server's own data folder's list: a data folder switched to here lists nothing new
        endpoints = load_endpoints(env.root)
    except EndpointError as exc:
        st.sidebar.error(md_escape(str(exc)))
        endpoints = []
    labels |= endpoint_choices(endpoints)
    labels[OTHER_MODEL] = OTHER_MODEL
    if ss["model_choice"] not in labels:
        # a model this data folder does not know (another folder's, or set with `use_model`): kept as typed text
        ss["model_spec"], ss["model_choice"] = ss["model_choice"], OTHER_MODEL
    with st.sidebar:
        st.selectbox(
            "Model",
            list(labels),
            key="model_choice",
            format_func=labels.get,
            help="The backend of every page: the default model, a finished training run's model, a listed "
            "endpoint's model, or any other spec.",
        )
        if ss["model_choice"] == OTHER_MODEL:
            st.text_input(
                "Model spec",
                key="model_spec",
                help="A model folder inside the workspace, a hub id, or `openai:MODEL@URL` on a URL the operator "
                "listed in endpoints.yaml.",
            )
    model = ss["model_spec"].strip() if ss["model_choice"] == OTHER_MODEL else ss["model_choice"]
    try:
        model = browser_model_spec(model or DEFAULT_MODEL, workspace, endpoints, labels)
    except EndpointError as exc:
        refuse(f"Model: {exc}")
    if user:
        with st.sidebar:
            st.text(f"Logged in as {user}")
            st.button("Log out", key="logout", on_click=ss.pop, args=("identity", None))
    return Settings(workspace, model, user, endpoints)


def refuse(message: str) -> None:
    """Stop the page with a setting's error (nothing on the page may run with a refused setting)."""
    st.error(md_escape(message))
    st.stop()


def require_login() -> str | None:
    """Where the server asks for a login (`cai app --host ...`): the visitor's identity once logged in, by the
    form or by `?token=` in the URL; until then the page shows the login form only and stops. None where no
    login is asked."""
    access = Access.from_env()
    if not access.required:
        address = st.get_option("server.address")
        if address and address not in LOCAL_HOSTS:  # started by hand (`streamlit run`), not by `cai app --host`
            refuse(f"This server listens on {address} with no login: start it with `cai app --host {address}`.")
        return None
    ss = st.session_state
    if "identity" not in ss and "token" in st.query_params:
        identity = access.login("", st.query_params["token"])
        del st.query_params["token"]  # out of the address bar, the history and any link copied from it
        if identity:
            ss["identity"] = identity
    if "identity" in ss:
        return ss["identity"]
    st.title("Log in")
    with st.form("login_form"):
        name = st.text_input("Name", key="login_name", help="Your login; leave it empty to log in with the token.")
        secret = st.text_input("Password or token", key="login_secret", type="password")
        if st.form_submit_button("Log in", key="login", type="primary"):
            identity = access.login(name, secret)
            if identity:
                ss["identity"] = identity
                st.rerun()
            st.error("Wrong name, password or token.")
    st.stop()


def use_model(spec: str) -> None:
    """Make `spec` every page's model. A widget callback: the sidebar's widgets may change only before they are
    drawn, so call it through `on_click`."""
    st.session_state["model_choice"] = spec


def save_upload(workspace: Workspace, upload, suffixes: tuple[str, ...]) -> Path:
    """Keep an uploaded file in the data folder's uploads/ (jobs read files, not uploads) under its own name."""
    name = Path(upload.name).name
    if Path(name).suffix not in suffixes:
        raise OutsideWorkspace(f"{name}: expected a {' or '.join(suffixes)} file")
    target = workspace.root / "uploads" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(upload.getvalue())
    return target


def local_path(spec: str) -> str:
    """A path typed on a page, made absolute when it names something here: jobs run from the project
    folder, which need not be where the app was started. Anything else (a hub id, `openai:...`) is kept."""
    return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec


@contextmanager
def connect(workspace: Workspace) -> Iterator[Store]:
    """Open the store for this script run only (DuckDB lets one process hold the file, and background jobs
    and the CLI need it too), after copying in whatever background jobs have spooled since the last run."""
    try:
        with Store.open(workspace) as store:
            store.ingest(workspace.runs_dir)
            yield store
    except StoreError as exc:
        st.error(f"The database cannot be opened: {exc}")
        st.stop()


def flash(kind: str, message: str) -> None:
    """Keep a message for the next run: callbacks run before the page is drawn, and a message they wrote
    directly would be wiped by that draw."""
    st.session_state["flash"] = (kind, message)


def show_flash() -> None:
    if "flash" in st.session_state:
        kind, message = st.session_state.pop("flash")
        show = {"success": st.success, "error": st.error, "info": st.info}[kind]
        show("  \n".join(md_escape(line) for line in message.splitlines()))


# --- background jobs: the controls every page that launches one shares ------------------------------------

ACTIVE = ("pending", "running")
REFRESH_SECONDS = 2
STARTING_SECONDS = 60  # a launched job says "pending" until its process has imported torch and begun
STATUS_ICONS = {
    "pending": ":material/schedule:",
    "running": ":material/autorenew:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/stop_circle:",
}

Starter = Callable[[JobFolder], object]
"""Starts a job's process detached, e.g. `JobFolder.resume_in_background` or `cai_core.train.launch_train_job`."""


def launch_job(job: JobFolder, start: Starter) -> bool:
    """Start the job unless it is running, or this session launched it a moment ago and its process has not
    begun reporting yet (starting it again would run it twice). True when it was started."""
    status = job.progress().status
    launched_at = st.session_state.get("launched_at", {}).get(job.run_id, 0)
    if status == "running" or (status == "pending" and time.time() - launched_at < STARTING_SECONDS):
        return False
    start(job)
    st.session_state.setdefault("launched_at", {})[job.run_id] = time.time()
    return True


def cancel_job(job: JobFolder) -> None:
    job.request_cancel()
    flash("info", f"Asked {job.run_id} to stop; what it has done so far is kept.")


def resume_job(job: JobFolder, start: Starter) -> None:
    start(job)
    st.session_state.setdefault("launched_at", {})[job.run_id] = time.time()
    flash("success", f"Resumed {job.run_id}; it continues where it stopped.")


def job_status(job: JobFolder, progress: Progress, *, details: str, progress_text: str, show_message=True) -> None:
    """The job's name, kind and status, a line of details, its progress bar, and its last message: a failure's
    reason in full as literal text, anything else (where a cancelled job stopped, a score) as a caption."""
    icon = STATUS_ICONS.get(progress.status, "")
    st.markdown(f"{icon} **{progress.status}**")
    st.text(f"{job.run_id} · {job.spec['kind']} · {details}")
    st.progress(progress.fraction, text=progress_text)
    if progress.status == "failed":
        st.error("This run failed:", icon=":material/error:")
        st.code(progress.message, language=None, wrap_lines=True)
    elif progress.message and show_message:
        st.text(progress.message)


def job_buttons(job: JobFolder, progress: Progress, start: Starter, *, resumable: bool = True) -> None:
    """Cancel while the job is active; Resume once it has failed or been cancelled (and `resumable`).

    The action runs in the click's run and the whole page is then drawn again: inside a fragment a click
    reruns only the fragment, and the flash message is drawn at the top of the page, outside it."""
    if progress.status in ACTIVE and st.button("Cancel", key=f"cancel-{job.run_id}"):
        cancel_job(job)
        st.rerun()
    elif progress.status in ("failed", "cancelled") and resumable and st.button("Resume", key=f"resume-{job.run_id}"):
        resume_job(job, start)
        st.rerun()


def job_log(job: JobFolder, *, expanded: bool = False) -> None:
    with st.expander("Log", expanded=expanded):
        st.code(job.log_tail() or "(no output yet)", language=None)


def live_panel(draw: Callable[[], bool], *, active: bool, refresh_key: str) -> None:
    """Draw `draw()` (which returns whether any job is still active) and, while one is, redraw it every few
    seconds. When the last one ends the whole page is redrawn once, which stops the redrawing; with none
    active a Refresh button takes its place."""

    @st.fragment(run_every=REFRESH_SECONDS if active else None)
    def panel() -> None:
        if not draw() and active:
            st.rerun()

    panel()
    if not active:
        st.button("Refresh", key=refresh_key)


def show_text(text: str | None, *, height: int | str = "content") -> None:
    """Model or prompt text, literally: st.code never interprets markdown or HTML."""
    if not text:
        st.caption("(empty)")
        return
    st.code(text, language=None, wrap_lines=True, height=height)


def md_escape(text: str) -> str:
    """Text for places that read markdown (alerts, widget labels, expander titles), shown as typed. Escaping
    leaves bare URLs, www. names and e-mail addresses to become links (GFM finds them in the raw text), so a
    zero-width space breaks each; text with no such place goes to `st.text` or `show_text` instead."""
    text = re.sub(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", "\u200b", text)
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", text)


DIFF_STYLE = (
    "white-space:pre-wrap;font-family:'Source Code Pro',monospace;font-size:0.9rem;line-height:1.5;"
    "padding:0.75rem 1rem;border:1px solid rgba(128,128,128,0.35);border-radius:0.5rem"
)
INSERT_STYLE = "background:#c8f0c8;color:#0a3d0a;text-decoration:none"
DELETE_STYLE = "background:#ffd0d0;color:#5c0000;text-decoration:line-through"


def diff_html(old: str, new: str) -> str:
    """The word diff of `old` -> `new` as HTML: insertions green, deletions red and struck through.
    Every piece of text is escaped; only the tags written here are HTML."""
    parts = []
    for op, text in word_diff(old, new):
        piece = html.escape(text)
        if op == "insert":
            parts.append(f'<ins style="{INSERT_STYLE}">{piece}</ins>')
        elif op == "delete":
            parts.append(f'<del style="{DELETE_STYLE}">{piece}</del>')
        else:
            parts.append(piece)
    return f'<div class="word-diff" style="{DIFF_STYLE}">{"".join(parts)}</div>'


def show_word_diff(old: str, new: str) -> None:
    st.html(diff_html(old, new))


def side_by_side_html(old: str, new: str) -> str:
    """A two-column line diff as an HTML table; every line of text is escaped."""
    colors = {"delete": ("#ffd0d0", ""), "insert": ("", "#c8f0c8"), "change": ("#ffe9c2", "#fff3c2")}
    rows = []
    for n, hunk in enumerate(side_by_side(old, new)):
        if n:
            rows.append('<tr><td colspan="4" style="text-align:center;color:#888">⋯</td></tr>')
        for row in hunk:
            left_bg, right_bg = colors.get(row.tag, ("", ""))
            cells = []
            for number, text, background in ((row.old_no, row.old, left_bg), (row.new_no, row.new, right_bg)):
                cells.append(f'<td style="color:#888;text-align:right;padding:0 0.5rem">{number or ""}</td>')
                cells.append(
                    f'<td style="background:{background or "transparent"};white-space:pre-wrap;'
                    f'padding:0 0.5rem;width:50%">{html.escape(text or "")}</td>'
                )
            rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<table class="side-by-side" style="width:100%;border-collapse:collapse;font-family:monospace;'
        f'font-size:0.85rem">{"".join(rows)}</table>'
    )


def chat_transcript(chat: Chat) -> str:
    """A chat as plain text, one block per message, exactly as the model receives the messages."""
    return "\n\n".join(f"[{message['role']}]\n{message['content']}" for message in chat)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
