"""Plotly figures as plain JSON-ready dicts.

Why dicts and not ``plotly.graph_objects``: a report holds dozens of figures and the
graph-object validation (plus the default template copied into every figure)
costs seconds and ~10 kB per figure for nothing; the HTML page applies one shared
style instead. Every string that reaches a figure and may come from a trace, a
server or a user (run labels, model, tenant and metric names) goes through
``label`` here, which HTML-escapes it: plotly renders a subset of HTML in text
(``<b>``, ``<a href>``), so an unescaped name would be markup, not text.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
)


def label(text: object) -> str:
    """A user-supplied string made safe to show as plotly text."""
    return html.escape(str(text), quote=True)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass
class Figure:
    """One plotly figure: ``data`` and ``layout`` as JSON-ready dicts, plus a caption."""

    title: str
    data: list[dict[str, Any]]
    layout: dict[str, Any] = field(default_factory=dict)
    caption: str = ""  # plain text; escaped by the HTML assembly

    def to_json(self) -> dict[str, Any]:
        # The title is rendered by the page (an escaped <h3>), not by plotly, so the
        # legend can sit on top of the plot without colliding with it.
        return {"data": self.data, "layout": self.layout}


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": label(title)}, "automargin": True, **extra}


def _positive(values: Sequence[Any]) -> list[float]:
    """The finite positive numbers among ``values`` (what a log axis can show)."""
    out = []
    for v in values:
        if isinstance(v, int | float) and math.isfinite(v) and v > 0:
            out.append(float(v))
    return out


DECADE_TICKS_FROM = 3.0  # decades of data from which a log axis labels only powers of ten


def _log_axis(title: str, values: Sequence[Any], **extra: Any) -> dict[str, Any]:
    """A log axis whose ticks read as whole numbers: ``1, 10, 100, 1,000`` over wide ranges,
    ``1, 2, 5, 10, 20, 50`` over narrow ones.

    Why not plotly's default: on a log axis it labels the ticks between decades with a
    bare, smaller leading digit, so an axis reads "5 … 10 2 3 4" and a reader cannot tell
    20 from 2000. ``tickformat`` makes plotly print every tick as a full number; ``dtick``
    picks one tick per decade when the data span ``DECADE_TICKS_FROM`` decades or more
    (minor grid lines keep the 2..9 positions; 1-2-5 labels would crowd a 560 px panel)
    and the 1-2-5 steps otherwise.
    """
    pos = _positive(values)
    decades = math.log10(max(pos) / min(pos)) if pos else 0.0
    ticks: dict[str, Any] = {"type": "log", "tickformat": ",~g", "exponentformat": "power"}
    if decades >= DECADE_TICKS_FROM:
        ticks |= {"dtick": 1, "minor": {"dtick": "D1", "showgrid": True, "gridcolor": "#f3f4f7"}}
    else:
        ticks["dtick"] = "D2"
    return _axis(title, **ticks, **extra)


def _axis_for(title: str, log: bool, values: Sequence[Any], **extra: Any) -> dict[str, Any]:
    return _log_axis(title, values, **extra) if log else _axis(title, type="linear", **extra)


def _flat(seqs: Sequence[Sequence[Any]]) -> list[Any]:
    return [v for s in seqs for v in s]


def _mode(mode: str, y: Sequence[Any]) -> str:
    """``mode`` with markers added when no two neighbouring points are both present.

    Why: a line needs two adjacent points; a series of one sample (a worker's peak RSS
    reported once at its end) or of points separated by gaps draws nothing at all with
    ``mode='lines'``, which left such panels empty.
    """
    if "markers" in mode or "lines" not in mode:
        return mode
    present = [v is not None for v in y]
    if any(a and b for a, b in itertools.pairwise(present)):
        return mode
    return mode + "+markers"


def _log_ok(values: Sequence[float | None]) -> bool:
    """Log axis when all values are positive and span more than two decades."""
    pos = [v for v in values if v is not None]
    if not pos or min(pos) <= 0:
        return False
    return max(pos) / min(pos) > 100


def cdf(
    title: str,
    unit_label: str,
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float]]],
    *,
    threshold: float | None = None,
    threshold_label: str = "SLO",
    caption: str = "",
) -> Figure:
    """Empirical CDFs overlaid (one line per run), with an optional SLO threshold line."""
    data = []
    allx: list[float | None] = []
    for i, (name, xs, ps) in enumerate(series):
        allx.extend(xs)
        data.append({
            "type": "scatter", "mode": "lines", "name": label(name),
            "x": list(xs), "y": list(ps), "line": {"color": color(i), "width": 2},
            "hovertemplate": "%{x:.4g} " + label(unit_label) + "<br>P=%{y:.4f}<extra>" + label(name) + "</extra>",
        })
    log_x = _log_ok([*allx, threshold])
    layout: dict[str, Any] = {
        "xaxis": _axis_for(unit_label, log_x, [*allx, threshold]),
        "yaxis": _axis("fraction ≤ x", range=[0, 1.02]),
    }
    if threshold is not None:
        layout["shapes"] = [{
            "type": "line", "xref": "x", "yref": "paper", "x0": threshold, "x1": threshold,
            "y0": 0, "y1": 1, "line": {"color": "#444", "dash": "dash", "width": 1},
        }]
        layout["annotations"] = [{
            # annotations on a log axis take log10 of the position (shapes take data values)
            "x": math.log10(threshold) if log_x and threshold > 0 else threshold,
            "y": 1, "xref": "x", "yref": "paper", "showarrow": False,
            "text": label(threshold_label), "xanchor": "left", "yanchor": "bottom",
            "font": {"size": 11},
        }]
    return Figure(title, data, layout, caption)


def lines(
    title: str,
    x_title: str,
    y_title: str,
    series: Sequence[dict[str, Any]],
    *,
    y_log: bool = False,
    caption: str = "",
    step: bool = False,
) -> Figure:
    """Time series (or any x/y lines). Each series: ``name, x, y`` and optional ``dash``,
    ``color``, ``axis`` ('y2' for a right axis) and ``y2_title``."""
    data = []
    layout: dict[str, Any] = {
        "xaxis": _axis(x_title),
        "yaxis": (_log_axis(y_title, _flat([s["y"] for s in series])) if y_log
                  else _axis(y_title, type="linear", rangemode="tozero")),
        "hovermode": "x unified",
    }
    for i, s in enumerate(series):
        trace: dict[str, Any] = {
            "type": "scatter", "mode": _mode(s.get("mode", "lines"), s["y"]), "name": label(s["name"]),
            "x": list(s["x"]), "y": list(s["y"]),
            "line": {"color": s.get("color", color(i)), "width": 1.6,
                     "dash": s.get("dash", "solid"), **({"shape": "hv"} if step else {})},
        }
        if s.get("axis") == "y2":
            trace["yaxis"] = "y2"
            layout["yaxis2"] = _axis(s.get("y2_title", ""), overlaying="y", side="right",
                                     rangemode="tozero", showgrid=False)
        data.append(trace)
    return Figure(title, data, layout, caption)


def bars(
    title: str,
    x_title: str,
    y_title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    x_log: bool = False,
    caption: str = "",
) -> Figure:
    """Pre-binned histograms, overlaid.

    With ``x_log`` each series gives all bin edges (counts + 1 values) and is drawn as
    a filled step outline, which stays exact on a log axis where bar widths do not;
    otherwise ``x`` are categories or bin positions drawn as bars.
    """
    if x_log:
        data = [
            {"type": "scatter", "mode": "lines", "name": label(name), "x": list(x),
             "y": [*y, y[-1]] if len(y) else [], "line": {"shape": "hv", "color": color(i), "width": 1.5},
             "fill": "tozeroy", "opacity": 0.6}
            for i, (name, x, y) in enumerate(series)
        ]
    else:
        data = [
            {"type": "bar", "name": label(name), "x": [label(v) if isinstance(v, str) else v for v in x],
             "y": list(y), "marker": {"color": color(i)}, "opacity": 0.75 if len(series) > 1 else 1.0}
            for i, (name, x, y) in enumerate(series)
        ]
    layout = {
        # without x_log, plotly infers the type: numbers make a linear axis, names a category one
        "xaxis": _log_axis(x_title, _flat([x for _, x, _ in series])) if x_log else _axis(x_title),
        "yaxis": _axis(y_title),
        "barmode": "overlay",
        "bargap": 0.02,
    }
    return Figure(title, data, layout, caption)


def heatmap(
    title: str,
    x_title: str,
    y_title: str,
    x: Sequence[float],
    y: Sequence[float],
    z: Sequence[Sequence[float | None]],
    *,
    log_axes: bool = False,
    caption: str = "",
) -> Figure:
    """A 2D density from pre-binned counts (``z[y][x]``)."""
    data = [{
        "type": "heatmap", "x": list(x), "y": list(y), "z": [list(r) for r in z],
        # the colour scale lies above the plot, right-aligned to it: upright at the right it
        # ran under the toolbar, which stands in the right margin (see html.py)
        "colorscale": "Viridis",
        "colorbar": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
                     "len": 0.5, "thickness": 10, "title": {"text": "requests", "side": "left"}},
        "hovertemplate": label(x_title) + " %{x:.4g}<br>" + label(y_title)
        + " %{y:.4g}<br>%{z} requests<extra></extra>",
    }]
    layout = {
        "xaxis": _axis_for(x_title, log_axes, x),
        "yaxis": _axis_for(y_title, log_axes, y),
    }
    return Figure(title, data, layout, caption)


def scatter_xy(
    title: str,
    x_title: str,
    y_title: str,
    series: Sequence[dict[str, Any]],
    *,
    x_log: bool = False,
    y_log: bool = False,
    caption: str = "",
    marks: Sequence[dict[str, Any]] = (),
    y_range: Sequence[float] | None = None,
) -> Figure:
    """Lines with markers (sweep curves, QQ plots); ``marks`` are starred points, each named
    in the legend by its ``text`` and outlined in its ``color`` (the series it belongs to)."""
    data = []
    for i, s in enumerate(series):
        data.append({
            "type": "scatter", "mode": s.get("mode", "lines+markers"), "name": label(s["name"]),
            "x": list(s["x"]), "y": list(s["y"]),
            "line": {"color": s.get("color", color(i)), "dash": s.get("dash", "solid"), "width": 1.6},
            "marker": {"size": s.get("size", 6), "color": s.get("color", color(i))},
            **({"text": [label(t) for t in s["text"]]} if "text" in s else {}),
        })
    for m in marks:
        # The star's label is its legend entry (and hover), not an annotation: labels of two
        # stars a few req/s apart (a baseline's and a variant's max goodput) sat on top of
        # each other, and arrows on a log axis cannot be spaced for every pair of rates.
        data.append({
            "type": "scatter", "mode": "markers", "name": label(m["text"]),
            "x": [m["x"]], "y": [m["y"]],
            "marker": {"size": 16, "symbol": "star", "color": "#f5b700",
                       "line": {"color": m.get("color", "#333"), "width": 2 if "color" in m else 1}},
            "hovertemplate": label(m["text"]) + "<extra></extra>",
        })
    xs = _flat([s["x"] for s in series]) + [m["x"] for m in marks]
    ys = _flat([s["y"] for s in series]) + [m["y"] for m in marks]
    yaxis = _axis_for(y_title, y_log, ys)
    if y_range is not None:
        yaxis["range"] = list(y_range)
    layout: dict[str, Any] = {
        "xaxis": _axis_for(x_title, x_log, xs),
        "yaxis": yaxis,
    }
    return Figure(title, data, layout, caption)

