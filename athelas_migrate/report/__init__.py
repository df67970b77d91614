"""One self-contained HTML page per migration: module trees with every key's mapping, where old and new
agree (outputs, aligned modules, sequence-length domain, training step), provenance and commands.

`page_for(...)` builds the Page, `write_page(page, path)` writes it. See docs/report.md.

To add a section: give `model.Page` a field for its data and fill it in `model.build_page` (decisions and
ordering happen there, where tests can check them without a browser); a chart is a function in `plots.py`
returning inline SVG, registered by name in `plots.page_plots`; then show the field in
`templates/report.html.j2`, which only formats (Jinja2 escapes every value).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"page_for": ".build", "report_commands": ".build", "Page": ".model", "build_page": ".model",
          "render_page": ".render", "write_page": ".render"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Lazy: `athelas_migrate.report.cli` (loaded with the CLI) must stay light until a page is rendered."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(name)
