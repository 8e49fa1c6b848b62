"""Screenshots of every page for the README: `python -m tests.browser.screenshots [--out DIR]`.

Runs the app on seeded data plus, when the default model has been converted (`make setup`), a real
SL-CAI run by that model (a few minutes on a busy 2-core machine; `--runs-from DATA/runs` copies earlier
runs instead, and their evaluations are pictured too), then drives Chromium through each page to a state
worth showing and writes 1400x1000 PNGs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from cai_core import jobs
from cai_core.critique import GenerateConfig
from cai_core.workspace import PROJECT_ROOT, Workspace

from .harness import VIEWPORT, choose_model, launch_chromium, running_app, settle, type_into, wait_for_app
from .seed import seeded_data

DEFAULT_MODEL_DIR = Workspace.from_env().models_dir / "SmolLM2-135M-Instruct"


def shoot(page, out: Path, name: str, anchor: str | None = None) -> None:
    """Scroll the text ANCHOR to the top of the view (or the page to its top), then take the picture."""
    if anchor:
        page.get_by_text(anchor).first.evaluate("element => element.scrollIntoView({block: 'start'})")
        page.mouse.wheel(0, -70)  # out from under Streamlit's header bar
    else:
        page.get_by_test_id("stMain").locator("h1").first.scroll_into_view_if_needed()
    page.wait_for_timeout(400)
    page.screenshot(path=str(out / f"{name}.png"))
    print(f"wrote {out / name}.png")


def go(page, name: str) -> None:
    """Follow the sidebar link: unlike loading the URL, it keeps the session and so the settings."""
    page.get_by_test_id("stSidebar").get_by_role("link", name=name).click()
    page.wait_for_url(f"**/{name}")
    settle(page)


def type_and_leave(page, field, text: str) -> None:
    type_into(field, text)
    page.get_by_test_id("stMain").locator("h1").first.click()  # leave the field, so it is not drawn focused


def main(out: Path, runs_from: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = seeded_data(root, hostile=False)
        model = str(DEFAULT_MODEL_DIR) if (DEFAULT_MODEL_DIR / "config.json").exists() else None
        if runs_from:
            for run in runs_from.iterdir():
                if run.name != "seed-run":
                    shutil.copytree(run, ws.runs_dir / run.name)
        elif model:
            print("generating real traces with the default model...")
            config = GenerateConfig(
                constitution=str(root / "constitutions" / "hhh.yaml"),
                prompts=str(ws.demo_prompts),
                model=model,
                rounds=2,
                limit=4,
                max_new_tokens=48,
            )
            jobs.run("generate", config, ws)
        with running_app(ws.root, root / "constitutions", root / "streamlit.log") as url, sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(300_000)  # "try it" runs the real model on the CPU

            page.goto(url)
            wait_for_app(page)
            shoot(page, out, "home")
            if model:
                choose_model(page, model)

            go(page, "Constitution")
            page.get_by_label("Constitution file").click()
            page.get_by_role("option", name="hhh.yaml").click()
            settle(page)
            principle = page.locator(".st-key-principle-1")
            principle.locator("summary").click()
            request = principle.get_by_label("Critique request")
            request.fill(request.input_value() + " Say which claims you are unsure of.")
            page.get_by_test_id("stMain").locator("h1").first.click()
            settle(page)
            shoot(page, out, "constitution-edit", "Principles (14, 14 enabled)")
            type_and_leave(page, page.get_by_label("Note for this version (optional)"), "ask about uncertain claims")
            page.locator(".st-key-save button").click()
            settle(page)
            page.get_by_role("tab", name="History").click()
            settle(page)
            shoot(page, out, "constitution-history", "Compare two versions")
            page.get_by_role("tab", name="Preview").click()
            settle(page)
            shoot(page, out, "constitution-preview", "The exact messages the model receives")
            if model:
                page.get_by_role("tab", name="Try it").click()
                settle(page)
                page.get_by_label("Max new tokens").fill("64")
                page.get_by_role("button", name="Run critique → revision").click()
                page.get_by_text("What the revision changed").wait_for()
                shoot(page, out, "constitution-try-it", "One answer, critique and revision")

            go(page, "Traces")
            shoot(page, out, "traces-list")
            type_and_leave(
                page, page.locator(".st-key-filter_text input"), "neighbour"
            )  # copied runs push it off page 1
            page.get_by_label("Open trace").click()
            page.get_by_role("option", name="My neighbour's dog barks all night").click()
            settle(page)
            page.get_by_text("Revision 2", exact=True).click()
            settle(page)
            type_and_leave(page, page.get_by_label("Your name"), "ada")
            page.get_by_text("better", exact=True).click()
            page.get_by_text("valid", exact=True).click()
            page.get_by_role("button", name="Save verdict").click()
            settle(page)
            shoot(page, out, "traces", "Trace seed-run:dog:0")

            go(page, "Generate")
            if model:  # a run in progress, cancelled once pictured (its folder is about to be deleted)
                page.get_by_label("Prompts to use").fill("3")
                page.get_by_label("Rounds", exact=True).fill("2")
                page.get_by_label("Max new tokens", exact=True).fill("32")
                page.get_by_role("button", name="Start in the background").click()
                started = page.get_by_text(re.compile(r"Started gen-[0-9a-f]+"))
                run_id = re.search(r"gen-[0-9a-f]+", started.inner_text()).group()
                card = page.locator(f".st-key-run-{run_id}").first
                expect(card).to_contain_text(re.compile(r"[1-9][0-9]* traces? stored"), timeout=300_000)
                shoot(page, out, "generate")
                card.get_by_role("button", name="Cancel").click()
                expect(card).to_contain_text(re.compile("cancelled|done"), timeout=300_000)
            else:
                shoot(page, out, "generate")

            if any(ws.runs_dir.glob("eval-*")):  # copied in with --runs-from: evaluations take many minutes
                go(page, "Evaluate")
                page.get_by_test_id("stPlotlyChart").first.wait_for()
                shoot(page, out, "evaluate", "Results")
                shoot(page, out, "evaluate-prompt", "Each prompt")
            browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots")
    parser.add_argument("--runs-from", type=Path, help="Copy these job folders in instead of generating.")
    args = parser.parse_args()
    main(args.out, args.runs_from)
