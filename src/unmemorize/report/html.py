"""A self-contained HTML report: sections of text, tables and embedded PNG plots, one file.

Commands build a list of :class:`Section` and call :func:`write_report`; later commands (unlearn,
attack, evaluate) add their own sections. Images are embedded as base64 so the file can be mailed.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from unmemorize.runs import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .meta{color:#666;font-size:.9em} img{max-width:100%;border:1px solid #eee}
.extractable{background:#fde2e1} .over-forgotten{background:#e1ecfd} .in-band{background:#e6f6e6}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""


@dataclass
class Section:
    title: str
    text: str = ""  # plain text paragraphs (escaped)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)
    preformatted: str = ""


def _table(df: pd.DataFrame, row_class_column: str | None = "verdict") -> str:
    cols = list(df.columns)
    out = ["<table><thead><tr>"]
    for c in cols:
        align = "l" if df[c].dtype == object else ""
        out.append(f'<th class="{align}">{html.escape(str(c))}</th>')
    out.append("</tr></thead><tbody>")
    for _, row in df.iterrows():
        cls = ""
        if row_class_column and row_class_column in cols:
            cls = str(row[row_class_column]).replace(" ", "-")
        out.append(f'<tr class="{html.escape(cls)}">')
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                s = "" if v != v else f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
            else:
                s = str(v)
            align = "l" if df[c].dtype == object else ""
            out.append(f'<td class="{align}">{html.escape(s)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption class="meta">{html.escape(alt)}</figcaption></figure>'


def render(title: str, sections: list[Section], subtitle: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class='meta'>{html.escape(subtitle)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        for para in filter(None, s.text.split("\n\n")):
            parts.append(f"<p>{html.escape(para)}</p>")
        for caption, df in s.tables:
            if caption:
                parts.append(f"<p class='meta'>{html.escape(caption)}</p>")
            parts.append(_table(df))
        for caption, path in s.images:
            parts.append(_image(path, caption))
        if s.preformatted:
            parts.append(f"<pre>{html.escape(s.preformatted)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    atomic_write_text(path, render(title, sections, subtitle))
    return Path(path)
