"""Data: make response pairs from your own traces, import files, export datasets, all without the CLI.

- pairs: each trace's first answer against its final revision (`cai pairs sl-cai`), or K answers sampled per
  prompt (`cai pairs sample --background`: a background job on the one job runner, with the shared controls);
- import: a pairs file, an hh-rlhf file or a file of people's labels, uploaded or named inside the workspace
  (`cai pairs import`, `cai import-labels`);
- export: SFT data, pairs and preferences with `cai export`'s filters, through the same `export_rows`, as a
  download or into the data folder's exports/ (`export_path`, where `cai export` writes by default), there and
  then or from a background job (`cai export --background`).
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from cai_core.auth import OPERATOR
from cai_core.export_job import ExportConfig
from cai_core.exports import (
    FORMATS,
    KINDS,
    ExportFilter,
    export_bytes,
    export_count,
    export_path,
    export_rows,
    write_export,
)
from cai_core.hub import write_and_push_export
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.pairs import (
    PairFileError,
    SampleConfig,
    import_labels,
    read_pairs_file,
    sl_cai_pairs,
)
from cai_core.store import Store
from cai_core.workspace import OutsideWorkspace
from ui.hub import hub_push
from ui.job_controls import job_cards, start_from_form, starter
from ui.paging import long_choice
from ui.settings import OPERATORS_ONLY, browser_file, connect, follow_context, prompt_file_input, setup
from ui.text import count, md_escape, show_flash, when

settings = setup("Data")
ws = settings.workspace
if settings.read_only:  # every part of this page makes, imports or exports data
    st.title("Data")
    st.info(OPERATORS_ONLY)
    st.stop()

ALL = "all"  # a filter left open
SHOWN_SAMPLE_RUNS = 5
IMPORT_SUFFIXES = (".jsonl", ".gz", ".csv")
IMPORT_KINDS = {
    "pairs": "pairs: prompt, response_a, response_b",
    "auto": "people's labels: hh-rlhf or pair_id, label, annotator (told by the first line)",
    "hh-rlhf": "people's labels: hh-rlhf (chosen and rejected transcripts)",
    "labels": "people's labels: pair_id, label, annotator",
}
EXPORT_KINDS = {
    "sft": "SFT: prompt and final revision (messages)",
    "prompt_completion": "SFT: prompt and completion",
    "pairs": "pairs: revision (chosen) over first answer (rejected)",
    "preferences": "preferences from labelled pairs (chosen, rejected, soft label)",
}
LATEST_LABELS = ""  # `export_rows`' default: the latest AI label run


def picked(value: str | None) -> str | None:
    """A filter's choice as `cai_core` takes it: None where it is left open."""
    return None if value in (None, ALL) else value


def export_settings(filters: dict) -> dict:
    """The page's export filters as `ExportConfig` fields: the run the rows come from is its `source_run`."""
    return {("source_run" if name == "run_id" else name): value for name, value in filters.items()}


def export_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=("export",))


def describe_export(job: JobFolder, progress) -> tuple[str, str]:
    config = job.spec["config"]
    details = f"{config['kind']} → {config['out']} · started {when(job.spec['created_at'])}"
    return details, f"{progress.done}/{count(progress.total, 'row')}"


def sample_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=("pairs",))


def describe_sampling(job: JobFolder, progress) -> tuple[str, str]:
    spec, config = job.spec, job.spec.get("config") or {}
    return (
        f"model {spec.get('model')} · K {config.get('k', '?')} · started {when(spec['created_at'])}",
        f"{progress.done}/{count(progress.total, 'prompt')}",
    )


st.title("Data")
show_flash()
st.write(
    "Response pairs for the judge and for people to label, and the datasets the trainers read. Pairs made or "
    "imported here reach the Annotate and Agreement pages; an export is the file the command line writes."
)
pairs_tab, import_tab, export_tab = st.tabs(["Pairs from your traces", "Import a file", "Export"])

with connect(ws) as store:

    def pick_traces(where, column: str, label: str, key: str) -> str:
        """An SL-CAI run or constitution version, or all: a page of them with a search box where there are many
        (200 runs and more)."""
        return long_choice(
            where,
            label,
            key,
            lambda text, limit, offset: store.distinct(column, text, limit, offset),
            lambda text: store.count_distinct(column, text),
            first=[ALL],
        )

    # --- pairs from traces ----------------------------------------------------------------------------------
    with pairs_tab:
        st.subheader("First answer against revision")
        st.caption("Each trace's first answer against its last revision; an unchanged revision gives no pair.")
        cols = st.columns(3)  # out of the form: a search redraws the choices
        follow_context("run", "slcai_run")
        run = pick_traces(cols[0], "run_id", "SL-CAI run", "slcai_run")
        version = pick_traces(cols[1], "constitution_version", "Constitution version", "slcai_version")
        with st.form("slcai_form"):
            max_round = st.number_input(
                "Revision of round at most", 1, None, value=None, placeholder="the last", key="slcai_max_round"
            )
            made = st.form_submit_button("Make pairs", key="slcai_make", type="primary")
        if made:
            pairs = sl_cai_pairs(store, run_id=picked(run), constitution_version=picked(version), max_round=max_round)
            added = store.add_pairs(pairs)
            if pairs:
                st.success(f"{count(len(pairs), 'pair')} of first answer and revision, {added} new.")
            else:
                st.info("No pair: no trace matches, or every revision left its answer unchanged.")

        st.subheader("K sampled answers per prompt")
        st.caption("The sidebar's model answers each prompt K times; every two different answers make a pair.")
        with st.form("sample_form"):
            cols = st.columns(2)
            prompt_file = prompt_file_input(cols[0], ws, "sample")
            cols[1].text_input("Model (set in the sidebar)", value=settings.model, disabled=True)
            skip_bad_prompts = cols[1].checkbox("Skip bad lines instead of stopping", key="sample_skip_bad")
            cols = st.columns(5)
            k = cols[0].number_input("Answers per prompt (K)", 2, 16, value=2, key="sample_k")
            pairing = cols[1].selectbox(
                "Pairing",
                ("all", "adjacent"),
                format_func={"all": "every two answers", "adjacent": "answer i with i+1"}.get,
                key="sample_pairing",
            )
            limit = cols[2].number_input("Prompts to use", 1, None, value=None, placeholder="all", key="sample_limit")
            max_new_tokens = cols[3].number_input("Max new tokens", 1, 4096, value=128, step=16, key="sample_tokens")
            temperature = cols[4].number_input("Temperature", 0.05, 2.0, value=1.0, step=0.1, key="sample_temperature")
            sample = st.form_submit_button("Sample in the background", key="sample_start", type="primary")
        if sample:
            start_from_form(
                ws,
                "pairs",
                lambda: SampleConfig(
                    prompts=prompt_file(),
                    model=settings.model,
                    k=k,
                    pairing=pairing,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    limit=limit,
                    skip_bad_lines=skip_bad_prompts,
                ),
                "Its pairs join the store as they land.",
            )
        job_cards(
            sample_jobs,
            starter(ws),
            describe_sampling,
            empty="No sampling runs yet.",
            refresh_key="refresh_sample_runs",
            per_page=SHOWN_SAMPLE_RUNS,
        )

    # --- import ---------------------------------------------------------------------------------------------
    with import_tab, st.form("import_form"):
        what = st.radio("The file holds", list(IMPORT_KINDS), format_func=IMPORT_KINDS.get, key="import_kind")
        cols = st.columns(2)
        path_text = cols[0].text_input("File inside the workspace (.jsonl, .jsonl.gz or .csv)", key="import_file")
        upload = cols[1].file_uploader("or upload one", type=["jsonl", "gz", "csv"], key="import_file_upload")
        cols = st.columns(3)
        first_n = cols[0].number_input("hh-rlhf: first N pairs", 1, None, value=None, placeholder="all", key="import_n")
        if settings.user:  # a login names whoever imports, and the lines that name nobody: no name is typed
            annotator = cols[1].text_input("Labels: annotator of lines with none", value=settings.user, disabled=True)
        else:
            annotator = cols[1].text_input("Labels: annotator of every line, if no column", key="import_who")
        skip_bad = cols[2].checkbox("Skip bad lines instead of stopping", key="import_skip")
        if st.form_submit_button("Import", key="import_start", type="primary"):
            try:
                path = browser_file(ws, path_text, upload, IMPORT_SUFFIXES)
                if what == "pairs":
                    found = read_pairs_file(path, skip_bad_lines=skip_bad)
                    added = store.add_pairs(found.pairs)
                    message = f"Read {count(len(found.pairs), 'pair')} from {Path(path).name}, {added} new"
                else:
                    result = import_labels(
                        store,
                        path,
                        file_format=what,
                        limit=first_n,
                        annotator=annotator.strip() or None,
                        skip_bad_lines=skip_bad,
                        importer=settings.user or OPERATOR,
                    )
                    found = result.found
                    message = (
                        f"Read {count(len(found.pairs), 'pair')} ({result.pairs_added} new) and imported "
                        f"{count(result.labels_added, 'human label')} from {Path(path).name}"
                        + (f"; kept {result.labels_kept} that people had already given" if result.labels_kept else "")
                    )
            except (OSError, PairFileError, ValueError) as exc:  # OutsideWorkspace is a ValueError
                st.error(md_escape(str(exc)))
            else:
                st.success(md_escape(f"{message}; skipped {count(len(found.problems), 'bad line')}."))

    # --- export ---------------------------------------------------------------------------------------------
    with export_tab:
        cols = st.columns(2)
        kind = cols[0].selectbox("What", KINDS, format_func=lambda k: EXPORT_KINDS.get(k, k), key="export_kind")
        fmt = cols[1].selectbox(
            "Format",
            FORMATS,
            format_func={"jsonl": "JSON lines", "parquet": "Parquet", "hf": "datasets folder (save_to_disk)"}.get,
            key="export_format",
        )
        cols = st.columns(3)
        if kind == "preferences":
            names = {LATEST_LABELS: "the latest AI label run", "human": "people's labels"}
            labels = long_choice(
                cols[0],
                "Labels",
                "export_labels",
                lambda text, limit, offset: store.run_ids("label", text, limit, offset),
                lambda text: store.count_runs("label", text),
                first=list(names),
                format_func=lambda r: names.get(r, r),
            )
            min_confidence = cols[1].number_input(
                "Min confidence |2P - 1|", 0.0, 1.0, value=0.0, step=0.05, key="export_min_confidence"
            )
            filters = {"run_id": labels or None, "min_confidence": min_confidence}
        else:
            follow_context("run", "export_run")
            run = pick_traces(cols[0], "run_id", "SL-CAI run", "export_run")
            version = pick_traces(cols[1], "constitution_version", "Constitution version", "export_version")
            max_round = cols[2].number_input(
                "Revision of round at most", 1, None, value=None, placeholder="the last", key="export_max_round"
            )
            filters = {"run_id": picked(run), "constitution_version": picked(version), "max_round": max_round}
        rows_filter = ExportFilter(**filters)
        total = export_count(store, kind, rows_filter)

        def rows() -> pd.DataFrame:
            """The rows themselves, made only when they are downloaded or written (a redraw counts them)."""
            with Store.open(ws) as own:  # a download runs on a thread of its own, after this run's store closed
                return export_rows(own, kind, rows_filter)

    if not total:
        source = "labelled pairs (Agreement or Annotate page)" if kind == "preferences" else "traces (Generate page)"
        export_tab.info(f"Nothing to export: no rows match. Make {source} first, or loosen the filters.")
    else:
        target = export_path(ws, kind, fmt)
        export_tab.text(f"{count(total, 'row')} match.")
        with export_tab.container(horizontal=True):
            if fmt != "hf":
                st.download_button(
                    "Download",
                    data=lambda: export_bytes(rows(), fmt),  # made when clicked, not at every redraw
                    file_name=target.name,
                    mime="application/jsonl" if fmt == "jsonl" else "application/vnd.apache.parquet",
                    key="export_download",
                    on_click="ignore",
                    icon=":material/download:",
                )
            write = st.button(f"Write to {target}", key="export_write", icon=":material/save:")
            in_background = st.button("Write in the background", key="export_background", icon=":material/schedule:")
        if write:
            try:
                write_export(rows(), ws.browser_write_path(target), fmt)
            except OutsideWorkspace as exc:
                export_tab.error(md_escape(f"Not written: {exc}"))
            else:
                export_tab.success(md_escape(f"Wrote {count(total, f'{kind} row')} to {target}."))
        if in_background:  # as `cai export --background`: the rows are read here, written by the job's process
            with export_tab:
                start_from_form(
                    ws,
                    "export",
                    lambda: ExportConfig(kind, fmt, str(ws.browser_write_path(target)), **export_settings(filters)),
                    f"It writes {target}; its card is below.",
                    lambda config: {"store": store},
                )
        if fmt == "hf":
            export_tab.caption("A datasets folder is many files: it is written into the data folder, not downloaded.")

        def push_to_hub(repo: str, private: bool, token: str) -> str:
            """Write the export to `target`, as the Write button does, and push it with its card."""
            with Store.open(ws) as own:
                path = ws.browser_write_path(target)
                return write_and_push_export(
                    export_rows(own, kind, rows_filter), path, fmt, kind, repo, token=token, store=own, private=private
                )

        with export_tab:
            hub_push("export_hub", f"the {kind} export", push_to_hub)
    with export_tab:
        job_cards(
            export_jobs,
            starter(ws),
            describe_export,
            empty="",
            refresh_key="refresh_export_runs",
            per_page=SHOWN_SAMPLE_RUNS,
        )
