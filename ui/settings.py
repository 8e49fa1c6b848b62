"""What every page starts with: `settings = setup("Title")` configures the page, reads who is logged in where
the server asks for logins (`cai app --host ...`: its front door logs people in), and draws the list of pages
and the shared settings in the sidebar (data folder, database, model), each checked to stay inside the
workspace; `connect` opens the store for one script run. `follow_context` carries the working context (the
constitution, prompts and SL-CAI run last chosen) from page to page.

These modules live outside `pages/`: Streamlit lists every file there as a page.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cai_core.auth import (
    IDENTITY_HEADER,
    IDENTITY_KEY_ENV,
    LOCAL_HOSTS,
    LOGOUT_PATH,
    Actor,
    NotAllowed,
    login_required,
    require_operator,
    set_actor_resolver,
    verify_identity,
)
from cai_core.backends import DEFAULT_MODEL
from cai_core.browser_models import browser_model_spec
from cai_core.endpoints import Endpoint, EndpointError, endpoint_choices, load_endpoints
from cai_core.jobs import training_algorithm
from cai_core.store import Store, StoreError
from cai_core.workspace import OutsideWorkspace, Workspace, write_file_atomically

from .engines import show_services
from .navigation import sidebar_navigation, tab_icon
from .text import md_escape


@dataclass(frozen=True)
class Settings:
    workspace: Workspace
    model: str
    actor: Actor | None  # who logged in; None where the app asks for no login (on 127.0.0.1)
    endpoints: list[Endpoint]  # the OpenAI-compatible servers the operator listed: the only URLs a page may name

    @property
    def user(self) -> str | None:
        return self.actor.name if self.actor else None

    @property
    def read_only(self) -> bool:
        """Whether the visitor may not do operator-only things: a page disables them (the sidebar says
        "operators only"); the library refuses them either way."""
        return self.actor is not None and not self.actor.is_operator

    def model_spec(self, spec: str) -> str:
        """A model typed on a page, checked as the sidebar's is (`browser_model_spec`)."""
        return browser_model_spec(spec, self.workspace, self.endpoints)


OPERATORS_ONLY = "Operators only: starting runs, imports, exports, settings and constitution edits."
OTHER_MODEL = "other…"  # the sidebar's choice that reveals a free-text model spec
# The sidebar's settings (data_dir, db_path, model_choice, model_spec), kept under a key that is no widget's.
# Streamlit drops a widget's value on a page that does not draw it, and a job panel's timed fragment rerun that
# fires after the browser has left its page drops every widget it did not draw, values assigned to themselves
# included (streamlit/streamlit#10805, PR #14064): the next page showed the defaults and the next job ran on
# the default model. A plain key is never dropped; each full run draws the widgets from it.
SETTINGS = "sidebar_settings"
# The page where people label: what they are shown there next is claimed for them (`Store.claim_annotations`, and the
# graders' audit queue), and given back when they go to another page, not held for CLAIM_SECONDS after they left.
ANNOTATE = "Annotate"
PAGE_DRAWN = "page_drawn"  # the title of the page the session's last full run drew


def set_setting(key: str, value: str) -> None:
    """Set a sidebar setting and its widget's value (before the widget is drawn: in a callback, or in `setup`)."""
    st.session_state[SETTINGS][key] = st.session_state[key] = value


def keep_setting(key: str) -> None:
    """A setting's widget callback: what the visitor chose becomes the setting."""
    st.session_state[SETTINGS][key] = st.session_state[key]


def _setting_widget(key: str, operator: bool) -> dict:
    """The arguments that make a sidebar widget a setting: it starts at the setting (see `setup`), what the visitor
    chooses becomes the setting, and only an operator may change it."""
    return {"key": key, "on_change": keep_setting, "args": (key,), "disabled": not operator}


def setup(title: str) -> Settings:
    """Configure the page, ask for a login where the server wants one, and draw the shared settings in the
    sidebar; every page calls this first. Nothing a setting names lies outside the workspace."""
    st.set_page_config(page_title=f"{title} · CAI workbench", page_icon=tab_icon(title), layout="wide")
    left_annotate = st.session_state.get(PAGE_DRAWN) == ANNOTATE != title
    st.session_state[PAGE_DRAWN] = title
    actor = require_login()
    operator = actor is None or actor.is_operator
    sidebar_navigation()
    env = Workspace.from_env()
    ss = st.session_state
    kept = ss.setdefault(SETTINGS, {})
    defaults = {
        "data_dir": str(env.root),
        "db_path": str(env.db_override or ""),
        "model_choice": DEFAULT_MODEL,
        "model_spec": "",
    }
    for key, default in defaults.items():  # each widget starts at its setting
        ss[key] = kept.setdefault(key, default)
    with st.sidebar:
        st.subheader("Settings")
        st.text_input(
            "Data folder",
            **_setting_widget("data_dir", operator),
            help="Holds the database, job folders and converted models; inside the workspace "
            f"({', '.join(map(str, env.browser_roots))}).",
        )
        st.text_input(
            "Database file",
            **_setting_widget("db_path", operator),
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
        if workspace != env:
            require_operator("switch the data folder or database")
    except (OutsideWorkspace, NotAllowed) as exc:
        refuse(f"Settings: {exc}")
    with connect(workspace) as store:
        annotator = actor.name if actor else ss.get(CONTEXT, {}).get("annotator", "").strip()
        if left_annotate and annotator:
            store.leave_queues(annotator)
        labels = model_choices(store)
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
        set_setting("model_spec", ss["model_choice"])
        set_setting("model_choice", OTHER_MODEL)
    with st.sidebar:
        st.selectbox(
            "Model",
            list(labels),
            format_func=labels.get,
            **_setting_widget("model_choice", operator),
            help="The backend of every page: the default model, a finished training run's model, a listed "
            "endpoint's model, or any other spec.",
        )
        if ss["model_choice"] == OTHER_MODEL:
            st.text_input(
                "Model spec",
                **_setting_widget("model_spec", operator),
                help="A model folder inside the workspace, a hub id, or `openai:MODEL@URL` on a URL the operator "
                "listed in endpoints.yaml.",
            )
    model = ss["model_spec"].strip() if ss["model_choice"] == OTHER_MODEL else ss["model_choice"]
    try:
        model = browser_model_spec(model or DEFAULT_MODEL, workspace, endpoints, labels)
    except (EndpointError, NotAllowed) as exc:
        refuse(f"Model: {exc}")
    with st.sidebar:
        st.subheader("Engine")
        show_services(workspace, place="sidebar", can_stop=operator)
    if actor:
        with st.sidebar:
            st.text(f"Logged in as {actor.name} ({actor.role})")
            if not operator:
                st.caption(OPERATORS_ONLY)
            # a link in this tab (`st.link_button` opens another): the front door forgets the login and its cookie
            st.markdown(f'<a href="{LOGOUT_PATH}" target="_self">Log out</a>', unsafe_allow_html=True)
    return Settings(workspace, model, actor, endpoints)


CONTEXT = "working_context"  # not a widget's key: Streamlit keeps it on pages that do not draw the widgets


def follow_context(name: str, key: str, options: Sequence[str] | None = None, default: str | None = None) -> None:
    """Call before drawing the widget `key` that picks the working context's `name` ("constitution": a file
    name; "prompts": a prompt source; "run": an SL-CAI run). The widget starts at the context's value; a value
    picked in it since its last draw becomes the context's, for every page. `options`: the values it offers
    (None: any text); with no context yet it starts at `default`, or the first option.

    Streamlit forgets a widget's value on a page that does not draw it, so the context lives under a key of
    its own, and each widget's last shown value beside it (that is how a pick is told from a value left over)."""
    ss = st.session_state
    context = ss.setdefault(CONTEXT, {})
    shown_key = f"{CONTEXT}:{key}"

    def offered(value) -> bool:
        return value is not None and (options is None or value in options)

    current = ss.get(key)
    if offered(current) and current != ss.get(shown_key):  # picked on this page since its last draw
        choice = current
    elif offered(context.get(name)):
        choice = context[name]
    elif offered(current):
        choice = current
    else:
        choice = default if default is not None else next(iter(options or ()), None)
    if choice is not None:
        ss[key] = ss[shown_key] = context[name] = choice


def refuse(message: str) -> None:
    """Stop the page with a setting's error (nothing on the page may run with a refused setting)."""
    st.error(md_escape(message))
    st.stop()


def logged_in_actor() -> Actor | None:
    """Who made this script run's request: the identity the front door signed into the stream's headers. Read
    afresh every run, never kept in the session: a browser that resumes someone else's session id brings its
    own headers, and so its own identity."""
    key = os.environ.get(IDENTITY_KEY_ENV)
    return verify_identity(request_headers().get(IDENTITY_HEADER), key) if key else None


def request_headers():
    """The headers of the request that opened this session's stream (as the front door sent them)."""
    return st.context.headers


set_actor_resolver(logged_in_actor)  # what `cai_core.auth.require_operator` asks in this process


def require_login() -> Actor | None:
    """Where the server asks for logins (`cai app --host ...`): the visitor, whom the front door logged in;
    a request that did not come through it has no valid identity and gets nothing. None where no login is
    asked."""
    if not login_required():
        address = st.get_option("server.address")
        if address and address not in LOCAL_HOSTS:  # started by hand (`streamlit run`), not by `cai app --host`
            refuse(f"This server listens on {address} with no login: start it with `cai app --host {address}`.")
        return None
    actor = logged_in_actor()
    if actor is None:
        refuse("Not logged in: open the address `cai app` printed, and log in there.")
    return actor


def model_choices(store: Store) -> dict[str, str]:
    """The models a page can pick as its backend, spec → label: `default`, then every finished trained model
    whose folder still exists, newest first (reward models score; they do not generate or judge)."""
    choices = {DEFAULT_MODEL: f"{DEFAULT_MODEL} (SmolLM2-135M-Instruct)"}
    for model in store.trained_models(generating_only=True):
        if Path(model.path).is_dir():
            choices[model.path] = f"{training_algorithm(model.kind).upper()} · {model.run_id} · step {model.step}"
    return choices


def use_model(spec: str) -> None:
    """Make `spec` every page's model. A widget callback: the sidebar's widgets may change only before they are
    drawn, so call it through `on_click`."""
    set_setting("model_choice", spec)


def save_upload(workspace: Workspace, upload, suffixes: tuple[str, ...]) -> Path:
    """Keep an uploaded file in the data folder's uploads/ (jobs read files, not uploads) under its own name."""
    name = Path(upload.name).name
    if Path(name).suffix not in suffixes:
        raise OutsideWorkspace(f"{name}: expected a {' or '.join(suffixes)} file")
    target = workspace.browser_write_path(workspace.root / "uploads" / name)
    return write_file_atomically(target, lambda out: out.write(upload.getvalue()))


def browser_file(workspace: Workspace, typed: str, upload, suffixes: tuple[str, ...], *, source: bool = False) -> str:
    """The file a form names: its upload, kept in the workspace (`save_upload`), else the path typed, held to the
    workspace (`OutsideWorkspace` otherwise). `source`: a prompt source, which may also be `hf:OWNER/NAME`."""
    if upload is not None:
        return str(save_upload(workspace, upload, suffixes))
    if source:
        return workspace.resolve_browser_source(typed, suffixes=suffixes)
    return str(workspace.resolve_browser_path(typed, suffixes=suffixes))


PROMPT_TYPES = ("jsonl", "csv", "txt")


def prompt_file_input(where, workspace: Workspace, key: str) -> Callable[[], str]:
    """A form's prompt file, typed (the working context's to start with) or uploaded, in the column `where`; the
    widgets' keys start with `key`. Returns what names the file once the form is sent (`browser_file`): an
    upload is saved then, not at every redraw."""
    follow_context("prompts", f"{key}_prompts", default=str(workspace.demo_prompts))
    typed = where.text_input(
        "Prompt file",
        key=f"{key}_prompts",
        help=".jsonl, .csv or .txt with a `prompt` field, or a saved datasets folder, inside the workspace; or "
        "hf:OWNER/NAME[:SPLIT].",
    )
    upload = where.file_uploader("or upload a prompt file", type=list(PROMPT_TYPES), key=f"{key}_upload")
    return lambda: browser_file(workspace, typed, upload, tuple(f".{t}" for t in PROMPT_TYPES), source=True)


@contextmanager
def connect(workspace: Workspace) -> Iterator[Store]:
    """Open the store for this script run only (DuckDB lets one process hold the file, and background jobs
    and the CLI need it too), after copying in whatever background jobs have spooled since the last run."""
    try:
        with Store.open(workspace) as store:
            store.ingest(workspace.runs_dir)
            yield store
    except StoreError as exc:
        st.error(md_escape(f"The database cannot be opened: {exc}"))
        st.stop()
