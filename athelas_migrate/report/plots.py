"""The report's charts as inline SVG, drawn with matplotlib.

matplotlib is imported here only, and this module only when a page is rendered: importing it
costs about half a second, which `--help` and the migration commands must not pay. The SVG
is deterministic: no date in the metadata, a fixed `svg.hashsalt` per chart (the ids of clip
paths derive from it), text kept as text (`svg.fonttype: none`, which also keeps pages small).

Differences are drawn on a log scale; a difference of exactly 0 has no place on it and is drawn
at a floor below everything else, as a hollow marker labelled "0 (bitwise equal)".
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STATUS_COLOR = {"pass": "#009E73", "fail": "#D55E00", "error": "#D55E00", "expected": "#E69F00", "skip": "#999999"}
CATEGORY_COLOR = {"agrees": "#009E73", "differs-expected": "#E69F00", "legacy-raises": "#999999",
                  "both-raise": "#cccccc", "differs-unexpected": "#D55E00", "v2-raises": "#D55E00"}


@contextmanager
def _figure(name: str, width: float, height: float) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    with matplotlib.rc_context({"svg.hashsalt": f"athelas-migrate-{name}", "svg.fonttype": "none",
                                "font.size": 8, "font.family": "sans-serif", "axes.spines.top": False,
                                "axes.spines.right": False}):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()  # inline: no XML declaration or DOCTYPE


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.inf if x in ("inf", "nan") else None  # json_safe writes non-finite floats as strings
    return v if math.isfinite(v) else math.inf


def _floor(values: list[float | None], tol: float) -> tuple[float, float]:
    """(where zeros are drawn, where +inf is drawn) on the log axis."""
    pos = [v for v in values if v is not None and 0 < v < math.inf] + ([tol] if tol > 0 else [])
    lo, hi = (min(pos), max(pos)) if pos else (1e-6, 1.0)
    return lo / 100, hi * 100


def _log(axis: Any) -> None:
    """A log scale with plain '1e-05' tick labels: matplotlib's default labels go through mathtext, which
    costs seconds per chart here."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")))
    axis.set_minor_locator(NullLocator())  # minor log ticks: dozens of tick objects per axis, no information


def _tolerance(ax: Any, tol: float, vertical: bool) -> None:
    if tol > 0:
        (ax.axvline if vertical else ax.axhline)(tol, color="#D55E00", linestyle="--", linewidth=1,
                                                 label=f"tolerance {tol:g}")


def outputs_chart(rows: list[tuple[str, Any, str]], tol: float) -> str:
    """Horizontal bars: max |diff| per checked output, log x, the tolerance line.

    Args:
        rows: (label, max_abs, status) per checked output.
        tol: the effective atol, drawn as a line.

    Returns:
        Inline SVG.
    """
    values = [_finite(v) for _, v, _ in rows]
    zero, top = _floor(values, tol)
    with _figure("outputs", 7.0, 0.8 + 0.22 * len(rows)) as fig:
        ax = fig.subplots()
        y = list(range(len(rows)))[::-1]
        for yi, (_, _, status), v in zip(y, rows, values):
            color = STATUS_COLOR.get(status, "#999999")
            if v is None:
                continue
            if v == 0:
                ax.plot([zero], [yi], "o", mfc="white", mec=color)
            else:
                ax.barh(yi, min(v, top) - zero, left=zero, color=color, height=0.6)
        ax.set_xlim(zero / 3, top)
        ax.set_xscale("log")
        _log(ax.xaxis)
        ax.set_yticks(y, [r[0] for r in rows])
        _tolerance(ax, tol, vertical=True)
        ax.set_xlabel("max |new - old| (log scale; hollow marker: 0, bitwise equal)")
        ax.legend(loc="lower right", frameon=False)
        return _svg(fig)


def modules_chart(modules: list[dict[str, Any]], tol: float, diverging: str | None) -> str:
    """max |diff| of every aligned module's output, in forward order; the first diverging one is named.

    Args:
        modules: verify's per-module rows (module, max_abs, ok), in forward order.
        tol: the effective atol.
        diverging: the first diverging module, or None.

    Returns:
        Inline SVG.
    """
    values = [_finite(m.get("max_abs")) for m in modules]
    zero, top = _floor(values, tol)
    with _figure("modules", 7.0, 2.6) as fig:
        ax = fig.subplots()
        ys = [zero if v in (None, 0) else min(v, top) for v in values]
        for ok, color in ((True, STATUS_COLOR["pass"]), (False, STATUS_COLOR["fail"])):
            for hollow in (True, False):  # one artist per marker style, not one per module
                idx = [i for i, m in enumerate(modules)
                       if bool(m.get("ok")) == ok and (m.get("max_abs") in (0, 0.0)) == hollow]
                if idx:
                    ax.plot(idx, [ys[i] for i in idx], "o", ms=4, mfc="white" if hollow else color, mec=color,
                            linestyle="none")
        for i, m in enumerate(modules):
            if m.get("module") == diverging:
                ax.annotate(f"first diverging: {diverging}", (i, ys[i]), xytext=(8, 8), textcoords="offset points",
                            color=STATUS_COLOR["fail"], fontweight="bold",
                            arrowprops={"arrowstyle": "-", "color": STATUS_COLOR["fail"]})
        ax.set_ylim(zero / 3, top)
        ax.set_yscale("log")
        _log(ax.yaxis)
        _tolerance(ax, tol, vertical=False)
        ax.set_xlabel(f"aligned modules in the refactored model's forward order ({len(modules)}; table below)")
        ax.set_ylabel("max |new - old|")
        ax.legend(loc="upper left", frameon=False)
        return _svg(fig)


def domain_chart(checks: list[dict[str, Any]], max_len: int | None, tol: float) -> str:
    """Per sequence length: the category (colour) and, where both models ran, max |diff| on a log scale.

    Args:
        checks: the domain section's checks that carry a length.
        max_len: the model's `max_sen_len` (marked), or None.
        tol: the effective atol.

    Returns:
        Inline SVG.
    """
    values = [_finite(c.get("max_abs")) for c in checks]
    zero, top = _floor(values, tol)
    with _figure("domain", 7.0, 2.6) as fig:
        ax = fig.subplots()
        seen = set()
        for c, v in zip(checks, values):
            data = c.get("data") or {}
            cat, length = data.get("category", "?"), data.get("length")
            color = CATEGORY_COLOR.get(cat, "#999999")
            label = None if cat in seen else cat
            seen.add(cat)
            if v is None:  # a model raised: no difference to draw, a band marks the length
                ax.axvspan(length - 0.5, length + 0.5, color=color, alpha=0.35, lw=0, label=label)
            elif v == 0:
                ax.plot([length], [zero], "o", mfc="white", mec=color, label=label)
            else:
                ax.bar(length, min(v, top) - zero, bottom=zero, color=color, width=0.8, label=label)
        if max_len:
            ax.axvline(max_len, color="#333333", linewidth=1, linestyle=":", label=f"max_sen_len {max_len}")
        ax.set_ylim(zero / 3, top)
        ax.set_yscale("log")
        _log(ax.yaxis)
        _tolerance(ax, tol, vertical=False)
        ax.set_xlabel("text length (tokens)")
        ax.set_ylabel("max |new - old|")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, ncols=6, fontsize=7)
        return _svg(fig)


def training_chart(loss: tuple[float, float] | None, norms: dict[str, list[float]]) -> str:
    """Left: the loss of the compared step, legacy vs refactored. Right: every parameter's gradient norm,
    legacy (x) against refactored (y): agreement puts every point on the diagonal.

    Args:
        loss: (legacy, refactored) loss, or None.
        norms: parameter -> [legacy norm, refactored norm].

    Returns:
        Inline SVG.
    """
    with _figure("training", 7.0, 2.6) as fig:
        ax_loss, ax_grad = fig.subplots(1, 2, width_ratios=[1, 2.2])
        if loss is not None:
            bars = ax_loss.bar(["legacy", "refactored"], list(loss), color=["#0072B2", "#E69F00"])
            ax_loss.bar_label(bars, labels=[f"{v:.8g}" for v in loss], fontsize=7)
        ax_loss.set_title("loss", fontsize=8)
        pts = [(a, b) for a, b in norms.values() if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
        if pts:
            lo = min(min(p) for p in pts) / 2
            hi = max(max(p) for p in pts) * 2
            ax_grad.plot([lo, hi], [lo, hi], color="#999999", linewidth=1, linestyle="--", label="equal")
            ax_grad.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, mfc="none", mec="#0072B2",
                         label=f"{len(pts)} parameters")
            ax_grad.set_xscale("log")
            ax_grad.set_yscale("log")
            _log(ax_grad.xaxis)
            _log(ax_grad.yaxis)
            ax_grad.legend(loc="upper left", frameon=False)
        ax_grad.set_xlabel("gradient L2 norm, legacy")
        ax_grad.set_ylabel("gradient L2 norm, refactored")
        ax_grad.set_title("gradients of the compared optimizer step", fontsize=8)
        return _svg(fig)


def page_plots(verify: dict[str, Any], modules: list[dict[str, Any]], diverging: str | None) -> dict[str, str]:
    """Every chart a verified page shows, from the verify report's dict form.

    Args:
        verify: `VerifyReport.to_dict()`.
        modules: per-module output differences (may be empty).
        diverging: the first diverging module, or None.

    Returns:
        Chart name (outputs, modules, domain, training) -> inline SVG, only for the charts with data.
    """
    tol = _finite(verify.get("effective_atol")) or 0.0
    sections = {s["name"]: s for s in verify.get("sections", [])}
    plots: dict[str, str] = {}
    rows = [(f"{name}: {c['name']}" if name == "stored" else c["name"], c.get("max_abs"), c["status"])
            for name in ("outputs", "stored") for c in sections.get(name, {}).get("checks", [])
            if c.get("max_abs") is not None]
    if rows:
        plots["outputs"] = outputs_chart(rows, tol)
    if modules:
        plots["modules"] = modules_chart(modules, tol, diverging)
    dom = sections.get("domain")
    if dom and any((c.get("data") or {}).get("length") is not None for c in dom["checks"]):
        checks = [c for c in dom["checks"] if (c.get("data") or {}).get("length") is not None]
        plots["domain"] = domain_chart(checks, (dom.get("summary") or {}).get("max_sen_len"), tol)
    train = {c["name"]: c for c in sections.get("training", {}).get("checks", [])}
    loss_data = (train.get("loss") or {}).get("data") or {}
    norms = ((train.get("gradients") or {}).get("data") or {}).get("norms") or {}
    if loss_data or norms:
        loss = (_finite(loss_data["legacy"]), _finite(loss_data["refactored"])) if "legacy" in loss_data else None
        plots["training"] = training_chart(loss, norms)
    return plots
