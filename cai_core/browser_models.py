"""The model specs the browser may name: the default, the sidebar's choices, models on the endpoints the operator
listed (`endpoints`), folders inside the workspace and hub ids. It sits above both `backends` (whose spec syntax it
reads) and `endpoints` (whose list it checks against), so neither imports the other's way back."""

from __future__ import annotations

from pathlib import Path

from .auth import require_operator
from .backends import BackendError, parse_openai_spec
from .endpoints import Endpoint, EndpointError, normalise_url
from .workspace import HUB_ID, PROJECT_ROOT, OutsideWorkspace, Workspace


def browser_model_spec(
    spec: str, workspace: Workspace, endpoints: list[Endpoint], choices: dict[str, str] | None = None
) -> str:
    """A model spec typed in the browser, as a job should receive it, or `EndpointError` saying why not:
    `default` or one of `choices` (the sidebar's list); `openai:MODEL@URL` on the `endpoints`' URLs only; a
    model folder inside the workspace (made absolute); a hub id (`owner/name`) that is no local path. Any but
    the default model is the operator's choice (`NotAllowed` otherwise)."""
    spec = spec.strip()
    if spec == "default":
        return spec
    require_operator("choose the model")
    if spec in (choices or {}):
        return spec
    if spec.startswith("openai:"):
        try:
            _, urls = parse_openai_spec(spec)
        except BackendError as exc:
            raise EndpointError(str(exc)) from None
        listed = {url for endpoint in endpoints for url in endpoint.urls}
        unlisted = [url for url in map(normalise_url, urls) if url not in listed]
        if unlisted:
            raise EndpointError(
                f"{', '.join(unlisted)} is not a listed endpoint; the operator lists the servers the app may "
                "use in endpoints.yaml"
            )
        return spec
    if HUB_ID.fullmatch(spec) and not Path(spec).exists() and not (PROJECT_ROOT / spec).exists():
        return spec
    try:
        return str(workspace.resolve_browser_path(spec))
    except OutsideWorkspace as exc:
        raise EndpointError(f"model {exc}") from None
