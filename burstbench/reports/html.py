"""Assembly of the HTML report: sections of escaped HTML and plotly figures in one file.

Why one file with plotly.js inlined once: a report is mailed, attached to tickets
and opened on laptops without network; it must render with no fetch at all. The
figures' JSON travels in one ``<script type="application/json">`` block in which
``<``, ``>`` and ``&`` are written as ``\\u003c`` etc., so no string from a trace or
a server can close the script element; every string shown as HTML goes through
``html.escape`` and every string shown by plotly through ``figures.label``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burstbench import __version__
from burstbench.reports.figures import Figure

Block = str | Figure  # str blocks are HTML already made safe by the builder


def esc(value: object) -> str:
    """HTML-escape any value for text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element, whatever strings it holds."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(obj: Any) -> Any:
    """Replace NaN/inf by None recursively so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    return obj


@dataclass
class Section:
    """A titled part of the report."""

    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    intro: str = ""  # plain text, escaped on output


_NUMERIC = re.compile(r"^[\s+\-–\[\]()%,.0-9e/µ]*$")


def _cell(c: Any) -> str:
    if isinstance(c, Raw):
        return f'<td class="n">{c.html}</td>'
    text = "" if c is None else str(c)
    cls = ' class="n"' if text and _NUMERIC.match(text) else ""
    return f"<td{cls}>{esc(text)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "") -> str:
    """An HTML table; cells are escaped unless wrapped in ``Raw``; numbers align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<div class="tablewrap"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


@dataclass(frozen=True)
class Raw:
    """A table cell already rendered as safe HTML (badges)."""

    html: str


def badge(ok: bool | None, text: str | None = None) -> Raw:
    if ok is None:
        return Raw(f'<span class="badge na">{esc(text or "n/a")}</span>')
    return Raw(f'<span class="badge {"pass" if ok else "fail"}">{esc(text or ("PASS" if ok else "FAIL"))}</span>')


def note(text: str, kind: str = "info") -> str:
    return f'<p class="note {esc(kind)}">{esc(text)}</p>'


_CSS = """
:root{--fg:#1d2430;--muted:#5b6575;--line:#e3e7ee;--bg:#f6f8fb;--pass:#17803d;--fail:#c62828}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2430;color:#fff;padding:16px 28px}
header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#c9d1dd;font-size:12px}
nav{padding:8px 28px;background:#fff;border-bottom:1px solid var(--line);position:sticky;top:0;z-index:5}
nav a{margin-right:14px;color:#1f5fbf;text-decoration:none;font-size:13px}
main{padding:8px 28px 40px;max-width:1500px}
section{margin-top:22px}
h2{font-size:18px;border-bottom:2px solid var(--line);padding-bottom:4px}
.intro{color:var(--muted);margin:4px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.figbox{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.figbox h3{margin:2px 0 0;font-size:14px}
.fig{height:340px}
.cap{color:var(--muted);font-size:12px;margin:2px 0 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px 14px}
.card h3{margin:0 0 2px;font-size:15px;word-break:break-all}
.card .sub{color:var(--muted);font-size:12px;margin-bottom:8px;word-break:break-all}
.kv{display:grid;grid-template-columns:auto auto;gap:2px 12px;font-size:13px}
.kv span:nth-child(odd){color:var(--muted)}
.verdict{font-size:16px;margin:8px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;color:#fff}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}.badge.na{background:#8a94a6}
.tablewrap{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:6px;margin:6px 0 12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.text td{white-space:normal;word-break:break-word}
table.kvt{width:auto;min-width:420px}
.tablewrap:has(table.kvt){display:inline-block;vertical-align:top;margin-right:14px}
thead th{background:#f0f3f8;position:sticky;top:0}
.note{background:#fff8e1;border-left:4px solid #f5b700;padding:6px 10px;margin:6px 0}
.note.info{background:#eef4fc;border-left-color:#1f5fbf}
.note.error{background:#fdecea;border-left-color:var(--fail)}
.sig{font-weight:600}
"""

MODEBAR_MARGIN = 40  # px right of the plot: the upright plotly toolbar (~30 px) sits there

_JS = """
(function(){
  var figs = JSON.parse(document.getElementById('bb-figures').textContent);
  // The legend runs along the top, across the plot's width; the toolbar stands upright
  // in the right margin, beside it rather than over it.
  var base = {margin:{l:64,r:MODEBAR_MARGIN,t:44,b:48}, height:340, autosize:true,
    font:{family:'system-ui,-apple-system,Segoe UI,Roboto,sans-serif', size:12},
    legend:{orientation:'h', yanchor:'bottom', y:1.0, xanchor:'left', x:0},
    modebar:{orientation:'v'},
    paper_bgcolor:'#fff', plot_bgcolor:'#fff'};
  function axis(a){ a = a || {}; if (a.gridcolor === undefined) a.gridcolor = '#e8ebf0';
    if (a.zerolinecolor === undefined) a.zerolinecolor = '#c9ced8'; return a; }
  figs.forEach(function(f, i){
    var layout = Object.assign({}, base, f.layout);
    if (f.layout.margin) layout.margin = Object.assign({}, base.margin, f.layout.margin);
    layout.xaxis = axis(layout.xaxis); layout.yaxis = axis(layout.yaxis);
    try {
      Plotly.newPlot('bb-fig-' + i, f.data, layout, {displaylogo:false, responsive:true})
        .catch(function(e){ console.error('burstbench: figure ' + i + ' failed', e); });
    } catch (e) { console.error('burstbench: figure ' + i + ' failed', e); }
  });
})();
"""


def render(
    title: str,
    sections: Sequence[Section],
    *,
    meta: Sequence[str] = (),
    plotly_js: str | None = None,
) -> str:
    """The complete HTML document."""
    if plotly_js is None:
        from plotly.offline import get_plotlyjs

        plotly_js = get_plotlyjs()
    figures: list[dict[str, Any]] = []
    parts: list[str] = []
    nav = []
    for sec in sections:
        nav.append(f'<a href="#{esc(sec.key)}">{esc(sec.title)}</a>')
        parts.append(f'<section id="{esc(sec.key)}"><h2>{esc(sec.title)}</h2>')
        if sec.intro:
            parts.append(f'<p class="intro">{esc(sec.intro)}</p>')
        in_grid = False
        for block in sec.blocks:
            if isinstance(block, Figure):
                if not in_grid:
                    parts.append('<div class="grid">')
                    in_grid = True
                i = len(figures)
                figures.append(clean_json(block.to_json()))
                cap = f'<p class="cap">{esc(block.caption)}</p>' if block.caption else ""
                parts.append(
                    f'<div class="figbox"><h3>{esc(block.title)}</h3>'
                    f'<div class="fig" id="bb-fig-{i}"></div>{cap}</div>'
                )
            else:
                if in_grid:
                    parts.append("</div>")
                    in_grid = False
                parts.append(block)
        if in_grid:
            parts.append("</div>")
        parts.append("</section>")
    meta_html = " · ".join(esc(m) for m in meta)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly_js}</script></head><body>'
        f'<header><h1>{esc(title)}</h1><div class="meta">{meta_html}</div></header>'
        f"<nav>{''.join(nav)}</nav><main>{''.join(parts)}</main>"
        f'<script type="application/json" id="bb-figures">{json_for_script(figures)}</script>'
        f"<script>{_JS.replace('MODEBAR_MARGIN', str(MODEBAR_MARGIN))}</script></body></html>\n"
    )


def count_figures(sections: Sequence[Section]) -> int:
    return sum(1 for s in sections for b in s.blocks if isinstance(b, Figure))


def default_meta(store: str | Path | None, trace: str | Path | None) -> list[str]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    items = [f"results: {Path(store).name}"] if store is not None else []
    if trace is not None:
        items.append(f"trace: {Path(trace).name}")
    items += [f"generated {now}", f"burstbench {__version__}"]
    return items


ProgressFn = Callable[[str], None]
