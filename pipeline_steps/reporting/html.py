"""reports/paper.html: the Markdown report rendered with markdown-it-py, its PNGs inlined as data
URIs and its style in the page, so one file reads offline and can be mailed or attached."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.5rem; vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _inline_images(body: str, base: Path) -> str:
    def data_uri(match: re.Match) -> str:
        path = base / html.unescape(match.group(1))
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{encoded}"'

    return re.sub(r'src="([^"]+\.png)"', data_uri, body)


def render_html(markdown: str, base: Path, title: str) -> str:
    """The page for `markdown`, whose image paths are relative to `base`."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{_inline_images(body, base)}</body></html>\n")
