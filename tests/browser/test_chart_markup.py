"""Issue 27 item 13: plotly reads user text as markup. A model named `<b>BOLD</b><br><i>it</i>` rendered bold and
italic, on two lines, in the charts and the downloaded report; drawn by Chromium, it must read as typed."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from cai_core.eval_report import report_html

from ..test_hostile_files import MARKUP, WRAPPER, hostile_summary
from .conftest import browser_page

pytestmark = pytest.mark.browser


def test_the_report_drawn_by_chromium_shows_the_name_as_typed(chromium, tmp_path):
    with browser_page(chromium) as page:
        page.set_content(report_html(hostile_summary()))
        ticks = page.locator(".xtick text")
        expect(ticks.first).to_be_visible()
        assert MARKUP in ticks.all_text_contents()
        expect(page.locator(".legendtext").first).to_be_visible()
        legend = page.locator(".legendtext").all_text_contents()
        assert WRAPPER in legend and f"{MARKUP} · {WRAPPER}" in legend
        # what must not happen: the name drawn as markup (bold or italic type, a second line)
        chart_text = page.locator(".main-svg text")
        assert chart_text.count() > 0
        styled = page.locator(".main-svg tspan[style*='font-weight:bold'], .main-svg tspan[style*='font-style:italic']")
        expect(styled).to_have_count(0)
