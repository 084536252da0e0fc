"""The report as one self-contained HTML page: every PNG embedded (base64), tables and notes."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from sumtune.report.plot import Picture


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list]


@dataclass
class Section:
    title: str
    intro: str = ""
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # statistics written as CSV/JSON


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1500px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; max-width: 1100px; }
table { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; } th { background: #f4f4f4; }
td.text { text-align: left; font-family: ui-monospace, monospace; }
.note { background: #fff8e1; border-left: 4px solid #f0c36d; padding: .4em .8em; margin: .6em 0; }
.files { font-size: .85em; color: #555; } code { font-size: .95em; }
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    if isinstance(value, int):
        return f"<td>{value}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    return f"<p><b>{html.escape(t.caption)}</b></p><table><tr>{head}</tr>{body}</table>"


def _picture(p: Picture, out: Path) -> str:
    data = base64.b64encode(p.path.read_bytes()).decode("ascii")
    rel = p.path.relative_to(out).as_posix()
    return (f'<figure id="{html.escape(p.key)}"><img src="data:image/png;base64,{data}" alt="{html.escape(p.title)}" '
            f'width="{p.width}" height="{p.height}"><figcaption><b>{html.escape(p.title)}</b> '
            f'(<a href="{html.escape(rel)}">{html.escape(rel)}</a>). {html.escape(p.caption)}</figcaption></figure>')


def render(title: str, intro: str, sections: list[Section], out: Path) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    parts.append("<ul>" + "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
                 + "</ul>")
    for i, s in enumerate(sections):
        parts.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{html.escape(s.intro)}</p>")
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
        parts += [_picture(p, out) for p in s.pictures]
        parts += [_table(t) for t in s.tables]
        if s.files:
            links = ", ".join(f'<a href="{html.escape(f.relative_to(out).as_posix())}">'
                              f"{html.escape(f.relative_to(out).as_posix())}</a>" for f in s.files)
            parts.append(f'<p class="files">The plotted numbers: {links}</p>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
