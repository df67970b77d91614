"""One self-contained HTML page per migration: module trees with every key's mapping, where old and new
agree (outputs, aligned modules, sequence-length domain, training step), provenance and commands.

`page_for(...)` builds the Page, `write_page(page, path)` writes it. See docs/report.md.
"""

from __future__ import annotations

from .build import page_for, report_commands
from .model import Page, build_page
from .render import render_page, write_page

__all__ = ["Page", "build_page", "page_for", "render_page", "report_commands", "write_page"]
