"""The HTML reports (an evaluation's, a recipe's): Jinja2 templates in `cai_core/templates/`, with autoescape on.

Every value a template prints is escaped unless it is marked safe, so user text (a prompt, an answer, a model's or
a run's name) is shown as text by default, not by remembering to escape it. Only three things are marked safe, each
made by a library that escapes what it holds: plotly.js itself, a chart's fragment (plotly writes its data as JSON
inside a script and escapes `</`), and a table (pandas' `to_html(escape=True)`).
"""

from __future__ import annotations

from functools import cache

import jinja2
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup

REPORT_TEMPLATE = "plotly_white"
"""The report's own chart template. Under Streamlit, plotly's default template is Streamlit's, whose colours are
placeholders the app fills in: a report saved from the page would come out black without this."""


def chart_html(figure: go.Figure) -> Markup:
    """A chart as a fragment of a report page, in the report's template; plotly.js comes with the page."""
    figure.update_layout(template=REPORT_TEMPLATE)
    return Markup(figure.to_html(full_html=False, include_plotlyjs=False))


def table_html(frame: pd.DataFrame) -> Markup:
    """A table whose every cell and header is escaped by pandas."""
    return Markup(frame.round(3).to_html(index=False, escape=True))


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cai_core", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a name the template misspells fails the report, not prints as empty
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["chart"] = chart_html
    environment.filters["table"] = table_html
    return environment


def render_report(template: str, title: str, **context) -> str:
    """A whole report as one HTML file with plotly.js inlined, so that it opens offline."""
    from plotly.offline import get_plotlyjs

    page = _environment().get_template(template)
    return page.render(title=title, plotlyjs=Markup(get_plotlyjs()), **context)
