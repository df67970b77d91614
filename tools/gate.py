#!/usr/bin/env python
"""The equivalence gate: migrate every fixture and prove the result computes what the legacy model did.

    python tools/gate.py --out out/gate [--manifest FILE ...] [--device cpu|cuda|auto] [--only TEXT]

For every entry of `fixtures/manifest.json` (and `fixtures/fusion_manifest.json`
when present; or the `--manifest` files given) the fixture is migrated into a
temporary directory with `athelas_migrate.api.migrate(src, dst,
overrides=entry["overrides"])` (BERT fusion entries: `{**overrides, "bert_config":
entry["bert_config"]}`) and verified with `run_verify` with the same overrides (generated
inputs, plus the entry's stored legacy outputs `io` when the file exists). Entries whose
family is not registered (or has no verify adapter yet) are skipped and listed.

Writes `gate-report.json` and `gate-junit.xml` into `--out`, one HTML report page per fixture
next to them (`<fixture>.html`: module trees, charts, provenance; docs/report.md), prints a table, and
exits 0 when every verified fixture passed, 1 when any failed or could not be
migrated or verified, 2 on usage errors (e.g. a missing manifest).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from athelas_migrate.report.render import format_number  # noqa: E402

DEFAULT_MANIFESTS = (ROOT / "fixtures" / "manifest.json", ROOT / "fixtures" / "fusion_manifest.json",
                     ROOT / "fixtures" / "names3risk_manifest.json")
STYLE = {"passed": "green", "failed": "bold red", "error": "bold magenta", "skipped": "dim"}


def load_entries(manifests: list[Path]) -> list[tuple[dict[str, Any], Path]]:
    """(entry, directory of its manifest) for every entry of the manifests, in order."""
    out = []
    for m in manifests:
        try:
            entries = json.loads(m.read_text())
        except FileNotFoundError:
            raise SystemExit(f"gate: manifest {m} not found") from None
        except ValueError as exc:
            raise SystemExit(f"gate: manifest {m} is not valid JSON ({exc})") from None
        if not isinstance(entries, list):
            raise SystemExit(f"gate: manifest {m} must hold a list of entries")
        out += [(e, m.parent) for e in entries]
    return out


def _worst(report, section: str, check: str | None = None) -> float | None:
    sec = report.section(section)
    if sec is None:
        return None
    vals = [c.max_abs for c in sec.checks if c.max_abs is not None and (check is None or c.name == check)]
    return max(vals) if vals else None


def verify_entry(entry: dict[str, Any], base: Path, workdir: Path, device: str, atol: float,
                 rtol: float, html_dir: Path | None = None) -> dict[str, Any]:
    """Migrate and verify one manifest entry (and write its HTML page into `html_dir`); never raises."""
    from athelas_migrate.api import migrate
    from athelas_migrate.equivalence.adapters import get_adapter
    from athelas_migrate.equivalence.runner import run_verify
    from athelas_migrate.errors import AthelasError
    from athelas_migrate.families import FAMILIES

    row: dict[str, Any] = {"file": entry.get("file"), "family": entry.get("family"),
                           "version": entry.get("version"), "dtype": entry.get("dtype", "float32"),
                           "status": "skipped", "reason": "", "duration_s": 0.0, "report": None}
    family = entry.get("family")
    if family not in FAMILIES:
        row["reason"] = f"family {family} is not registered (no athelas_migrate/families module for it yet)"
        return row
    adapter = get_adapter(family)
    if adapter is None:
        row["reason"] = f"family {family} has no verify adapter (athelas_migrate/equivalence/*.py)"
        return row
    if getattr(adapter, "domain_note", None):  # e.g. the BERT families: no sequence-length domain
        row["domain_note"] = adapter.domain_note
    t0 = time.perf_counter()
    src = base / entry["file"]
    dst = workdir / (Path(entry["file"]).stem + ".v2.ckpt")
    overrides = dict(entry.get("overrides") or {})
    if entry.get("bert_config") is not None:  # BERT fusion entries: the text encoder's transformers config
        overrides["bert_config"] = entry["bert_config"]
    stage = "migrate"
    result = report = None
    try:
        result = migrate(src, dst, overrides=overrides, force=True)
        if result.noop:
            row["reason"] = "already at the newest layout: nothing to verify"
            return row
        stage = "verify"
        io = base / entry["io"] if entry.get("io") else None
        report = run_verify(src, dst, atol=atol, rtol=rtol, overrides=overrides, device=device,
                            reference=io if io is not None and io.is_file() else None, modules=html_dir is not None)
        row["report"] = report
        row["status"] = "passed" if report.passed else ("failed" if report.failed_checks() else "error")
        if not report.passed:
            loc = report.localisation or {}
            bad = report.failed_checks() + report.errored_checks()
            row["reason"] = "; ".join(f"{s.name}/{c.name}: {c.detail}" for s, c in bad[:3])
            if loc.get("module"):
                row["reason"] = f"first divergent module {loc['module']} ({loc.get('kind')}); " + row["reason"]
    except AthelasError as exc:
        row["status"], row["reason"] = "error", f"{stage}: {exc}"
        row["report"] = getattr(exc, "report", None)
    except Exception as exc:  # a bug: report it, keep going with the other fixtures
        row["status"] = "error"
        row["reason"] = f"{stage}: {type(exc).__name__}: {exc} ({traceback.format_exc(limit=-1).strip()})"
        row["report"] = getattr(exc, "report", None)
    finally:
        row["duration_s"] = time.perf_counter() - t0
    if html_dir is not None and result is not None and not result.noop:
        row.update(_write_page(entry, src, dst, overrides, result, row["report"], html_dir, atol, rtol))
    return row


def _write_page(entry: dict[str, Any], src: Path, dst: Path, overrides: dict[str, Any], result: Any, report: Any,
                html_dir: Path, atol: float, rtol: float) -> dict[str, Any]:
    """The fixture's HTML report page, named after it; {"html": name, "html_bytes", "html_s"} or
    {"html_error": why} (a page that cannot be written never hides the gate's verdict)."""
    from athelas_migrate.report import page_for, report_commands, write_page

    t = time.perf_counter()
    name = Path(entry["file"]).stem + ".html"
    try:
        old = str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src)
        labels = (old, dst.name)
        commands = report_commands(old, dst.name, overrides, name, atol, rtol)
        page = page_for(str(src), str(dst), overrides, report, result=result, commands=commands, labels=labels)
        size = write_page(page, html_dir / name)
    except Exception as exc:  # noqa: BLE001 - reported in the row and the summary, never raised
        return {"html_error": f"{type(exc).__name__}: {exc}"}
    return {"html": name, "html_bytes": size, "html_s": round(time.perf_counter() - t, 3)}


def run_gate(entries: list[tuple[dict[str, Any], Path]], out: Path, device: str = "cpu", atol: float = 1e-5,
             rtol: float = 0.0, console: Console | None = None) -> int:
    """Verify every entry, write the reports into `out`, print the table; returns the exit code."""
    from athelas_migrate.equivalence.report import junit_document

    console = console or Console(width=None if sys.stdout.isatty() else 170)
    out.mkdir(parents=True, exist_ok=True)
    # legacy gate fusion without tabular fields has a Linear(0, F): torch says so on every construction
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="athelas-gate-") as tmp:
        for entry, base in entries:
            row = verify_entry(entry, base, Path(tmp), device, atol, rtol, html_dir=out)
            mark = Text(f"{row['status']:>7}", style=STYLE[row["status"]])
            console.print(mark, f"{row['file']} ({row['duration_s']:.2f}s)", highlight=False)
            rows.append(row)
    duration = time.perf_counter() - t0

    table = Table(title=f"Equivalence gate ({len(rows)} fixtures, {duration:.1f}s)", title_justify="left")
    for col in ("fixture", "family", "layout", "verdict", "logits", "probs", "weights", "grads", "step",
                "domain (legacy agrees / ignores tail / raises)", "time"):
        table.add_column(col, justify="right" if col in ("logits", "probs", "weights", "grads", "step", "time")
                         else "left")
    for row in rows:
        rep = row["report"]
        if rep is not None and rep.sections:
            outs = rep.outputs
            logits = outs.get("logits") or outs.get("output")
            probs = outs.get("probabilities")
            dom = rep.section("domain")
            r = dom.summary.get("ranges", {}) if dom else {}
            domain = " / ".join(r.get(k, "-") for k in ("agrees", "differs-expected", "legacy-raises")) if dom \
                else ("n/a" if row.get("domain_note") else "-")
            cells = [format_number(x, 1) for x in (logits.max_abs if logits else None,
                                                    probs.max_abs if probs else None, _worst(rep, "weights"),
                                                    _worst(rep, "training", "gradients"),
                                                    _worst(rep, "training", "one optimizer step"))]
            cells.append(domain)
            layout = f"{rep.old_version}->v2"
        else:
            cells = ["-"] * 6
            layout = f"{row.get('version') or '?'}->v2"
        table.add_row(row["file"], row["family"] or "?", layout,
                      Text(row["status"], style=STYLE[row["status"]]), *cells, f"{row['duration_s']:.2f}s")
    console.print(table)
    for row in rows:
        if row["status"] in ("failed", "error", "skipped") and row["reason"]:
            console.print(Text(f"{row['status']}: {row['file']}: {row['reason']}", style=STYLE[row["status"]]),
                          highlight=False)

    failed = [r for r in rows if r["status"] in ("failed", "error")]
    summary = {
        "tool": "athelas-migrate gate",
        "passed": not failed,
        "duration_s": round(duration, 3),
        "device": device,
        "atol": atol,
        "rtol": rtol,
        "counts": {s: sum(1 for r in rows if r["status"] == s) for s in ("passed", "failed", "error", "skipped")},
        "fixtures": [{k: (v.to_dict() if k == "report" and v is not None else v) for k, v in r.items()}
                     for r in rows],
    }
    (out / "gate-report.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")

    import xml.etree.ElementTree as ET

    suites = []
    for row in rows:
        rep = row["report"]
        if rep is not None and (rep.sections or rep.error):
            suites += rep.junit_suites(prefix=row["file"])
        else:  # skipped, or refused before a report existed (e.g. the migration itself)
            suite = ET.Element("testsuite", name=f"{row['file']} / gate", time=f"{row['duration_s']:.6f}")
            case = ET.SubElement(suite, "testcase", classname=f"gate.{row['family']}", name="migrate and verify",
                                 time=f"{row['duration_s']:.6f}")
            if row["status"] == "skipped":
                ET.SubElement(case, "skipped", message=row["reason"][:300])
            elif row["status"] in ("error", "failed"):
                ET.SubElement(case, "error", message=row["reason"][:300], type="GateError").text = row["reason"]
            suite.set("tests", "1")
            suite.set("failures", "0")
            suite.set("errors", "1" if row["status"] in ("error", "failed") else "0")
            suite.set("skipped", "1" if row["status"] == "skipped" else "0")
            suites.append(suite)
    (out / "gate-junit.xml").write_text(junit_document(suites, "athelas-migrate gate", seconds=duration))

    verdict = Text("GATE PASSED" if not failed else f"GATE FAILED ({len(failed)} of {len(rows)} fixtures)",
                   style="bold green" if not failed else "bold red")
    verdict.append(f"  reports: {out / 'gate-report.json'}, {out / 'gate-junit.xml'}", style="dim")
    console.print(verdict)
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/gate", help="directory for gate-report.json and gate-junit.xml")
    ap.add_argument("--manifest", action="append", type=Path,
                    help="manifest file(s) (default: fixtures/manifest.json and fixtures/fusion_manifest.json)")
    ap.add_argument("--only", action="append", default=[], help="verify only entries whose file contains TEXT")
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--rtol", type=float, default=0.0)
    args = ap.parse_args(argv)
    manifests = args.manifest or [m for m in DEFAULT_MANIFESTS if m.is_file()]
    try:
        entries = load_entries(manifests)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.only:
        entries = [(e, b) for e, b in entries if any(s in str(e.get("file")) for s in args.only)]
    if not entries:
        print("gate: no manifest entries to verify", file=sys.stderr)
        return 2
    return run_gate(entries, Path(args.out), device=args.device, atol=args.atol, rtol=args.rtol)


if __name__ == "__main__":
    sys.exit(main())
