"""The pages' "Push to the Hub" box: the repository is the only thing named in the browser; the token, the network
and the Hub's address (HF_ENDPOINT) are the operator's, from where the app runs (`cai_core.hub`)."""

from collections.abc import Callable

import streamlit as st

from cai_core.hub import HubError, cannot_push, hub_token, push_model
from cai_core.jobs import JobFolder
from ui.text import md_escape


def hub_push(key: str, what: str, push: Callable[[str, bool, str], str], *, disabled: bool = False) -> None:
    """Push WHAT to a Hub repository: `push(repo_id, private, token)` returns the commit's URL. Where the operator
    has not turned the Hub on, the box says what turns it on instead."""
    token = hub_token()
    with st.expander(f"Push {what} to the Hugging Face Hub", icon=":material/cloud_upload:"):
        if reason := cannot_push(token):
            st.caption(md_escape(f"Not available: {reason}; the operator sets it where the app starts."))
            return
        repo = st.text_input("Repository", key=f"{key}_repo", placeholder="owner/name").strip()
        public = st.checkbox("Public", key=f"{key}_public", help="A new repository is private unless this is ticked.")
        if st.button("Push", key=f"{key}_push", icon=":material/cloud_upload:", disabled=disabled or not repo):
            try:
                url = push(repo, not public, token)
            except (HubError, OSError, ValueError) as exc:  # a refusal, a Hub error, a bad repository name
                st.error(md_escape(f"Not pushed: {exc}"))
            else:
                st.success(md_escape(f"Pushed to {repo} ({'public' if public else 'private'}): {url}"))


def model_push(job: JobFolder, *, disabled: bool = False) -> None:
    """The Train page's box for a finished run: its model folder, with a card naming its constitution."""
    hub_push(
        f"train_hub-{job.run_id}",
        "this run's model",
        lambda repo, private, token: push_model(job, repo, token=token, private=private),
        disabled=disabled,
    )
