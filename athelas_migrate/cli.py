"""`athelas-migrate`: thin click commands over the API, rendered with rich.

Only click is imported at start-up; everything heavy is imported inside the
command that needs it, so `--help` answers instantly. Errors are mapped to exit
codes in one place (`_Group.invoke`): 0 ok, 1 check failed, 2 usage, 3 input refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from .errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, AthelasError

EXIT_INTERNAL = 70


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AthelasError as exc:
            if ctx.params.get("debug"):
                raise
            _err(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _err("interrupted; no output was left behind")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as exc:
            if ctx.params.get("debug"):
                raise
            _err(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            sys.exit(EXIT_REFUSED)
        except Exception as exc:  # a bug in this tool, not the user's fault
            if ctx.params.get("debug"):
                raise
            _err(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
            sys.exit(EXIT_INTERNAL)


def _err(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape  # messages quote file contents: '[/]' in a key must not be markup

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _text(value: Any) -> str:
    """Checkpoint-derived text printed literally: a key like '[/]' is data, not rich markup."""
    from rich.markup import escape

    return escape(str(value))


def _overrides(sets: tuple[str, ...], config_file: str | None, bert_config: str | None = None) -> dict[str, Any]:
    from .overrides import parse_overrides

    return parse_overrides(sets, config_file, bert_config)


set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Hyper-parameter the checkpoint lacks (VALUE parsed as JSON when valid JSON).")
config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                             help="JSON object of hyper-parameters (like --set).")
bert_option = click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
                           help="BERT families: the transformers config.json of the text encoder(s).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="athelas-migrate")
def main(debug: bool) -> None:
    """Migrate, verify and audit athelas Lightning checkpoints across layout versions.

    Exit codes: 0 success, 1 verification or check failed, 2 usage error,
    3 input refused (unreadable, unsafe, unknown layout, missing information).
    """


@main.command("ckpt")
@click.argument("old", type=click.Path(readable=False))  # the reader refuses unreadable files in one line
@click.argument("new", type=click.Path())
@click.option("--to", "to", default=None, help="Target layout version (default: newest; older = rollback).")
@set_option
@config_option
@bert_option
@click.option("--new-batch-keys", is_flag=True, help="v0 sources: use the v1 text batch key convention.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--force", is_flag=True, help="Replace NEW if it exists (never OLD).")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
def ckpt_cmd(old, new, to, sets, config_file, bert_config, new_batch_keys, dry_run, force, json_out) -> None:
    """Migrate checkpoint OLD into NEW (.ckpt, or .safetensors for weights plus metadata)."""
    from .api import migrate

    overrides = _overrides(sets, config_file, bert_config)
    if new_batch_keys:
        overrides["text_batch_key"] = None
    t0 = time.perf_counter()
    result = migrate(old, new, to=to, overrides=overrides, force=force, dry_run=dry_run)
    elapsed = time.perf_counter() - t0
    if json_out:
        click.echo(json.dumps(_result_summary(result, new, dry_run, elapsed), indent=2))
        return
    _render_result(result, new, dry_run, elapsed)


def _result_summary(result, new: str, dry_run: bool, elapsed: float) -> dict[str, Any]:
    traces = result.traces
    return {
        "source": result.raw.path, "family": result.family.name, "from": result.source_version,
        "to": result.target_version, "evidence": result.detection.evidence,
        "rule_files": [rf.name for rf in result.chain],
        "renamed": sum(1 for t in traces if t.target and t.target != t.source),
        "kept": sum(1 for t in traces if t.target == t.source),
        "dropped": [{"key": t.source, "reason": t.reason} for t in traces if t.target is None],
        "restored": [c.target for c in result.created], "hparam_edits": result.hparam_notes,
        "notes": result.notes, "warnings": result.warnings, "noop": result.noop,
        "written": None if (dry_run or result.noop) else os.path.abspath(new), "seconds": round(elapsed, 3),
    }


def _render_result(result, new: str, dry_run: bool, elapsed: float) -> None:
    from rich.table import Table

    con = _console()
    s = _result_summary(result, new, dry_run, elapsed)
    con.print(f"[bold]{s['family']}[/] {s['from']} -> {s['to']}  ({_text(os.path.basename(s['source']))})")
    con.print("  detected by: " + _text("; ".join(s["evidence"])))
    if result.noop:
        con.print(f"[yellow]already at layout {s['to']}: nothing to do, nothing written[/]")
        return
    table = Table(title="plan", show_lines=False)
    for col in ("rule file", "edge"):
        table.add_column(col)
    for rf in result.chain:
        table.add_row(rf.name, f"{rf.source_version} -> {rf.target_version}")
    con.print(table)
    con.print(f"  tensors: {s['renamed']} renamed, {s['kept']} kept, {len(s['dropped'])} dropped, "
              f"{len(s['restored'])} restored")
    for d in s["dropped"]:
        con.print(f"  [dim]dropped[/] {_text(d['key'])}: {_text(d['reason'])}")
    for r in s["restored"]:
        con.print(f"  [dim]restored[/] {_text(r)}")
    for h in s["hparam_edits"]:
        con.print(f"  [dim]hparam[/] {_text(h)}")
    for n in s["notes"]:
        con.print(f"  [cyan]note[/] {_text(n)}")
    for w in s["warnings"]:
        con.print(f"  [yellow]warning[/] {_text(w)}")
    if dry_run:
        con.print("[yellow]dry run: nothing written[/]")
    else:
        size = os.path.getsize(new)
        con.print(f"[green]wrote[/] {_text(new)} ({size:,} bytes) in {elapsed:.2f} s")


@main.command("audit")
@click.argument("old", type=click.Path(readable=False))
@click.option("--to", "to", default=None, help="Target layout version (default: newest).")
@set_option
@config_option
@bert_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "md"]), default="table")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write the report to a file.")
def audit_cmd(old, to, sets, config_file, bert_config, fmt, output) -> None:
    """Report every rename, drop and hyper-parameter edit of migrating OLD, writing no checkpoint."""
    from .api import audit

    report = audit(old, to=to, overrides=_overrides(sets, config_file, bert_config))
    if fmt in ("json", "md"):
        text = report.to_json() if fmt == "json" else report.to_markdown()
        if output:
            from .io.writer import atomic_output

            with atomic_output(output) as fh:
                fh.write(text.encode())
        else:
            click.echo(text)
        return
    from rich.table import Table

    con = _console()
    table = Table(title=f"{report.family} {report.source_layout} -> {report.target_layout}: "
                        f"{os.path.basename(report.source)}")
    for col in ("source key", "rule", "target key", "shape", "dtype", "sha256", "values"):
        table.add_column(col, overflow="fold")
    for r in report.rows:
        values = "unchanged" if r.unchanged else ("-" if r.unchanged is None else "CHANGED")
        table.add_row(_text(r.source), _text(r.rule.split(" > ")[-1]),
                      _text(r.target) if r.target else f"[dim]dropped: {_text(r.reason)}[/]",
                      "x".join(map(str, r.shape)), r.dtype, r.sha256[:12], values)
    con.print(table)
    for x in report.restored:
        con.print(_text(f"restored {x['target']} from {x['anchor']} ({x['rule']})"))
    for h in report.hparam_edits:
        con.print(f"[dim]hparam[/] {_text(h)}")
    for w in report.warnings:
        con.print(f"[yellow]warning[/] {_text(w)}")


@main.command("inspect")
@click.argument("path", type=click.Path(readable=False))
@click.option("--json", "json_out", is_flag=True)
def inspect_cmd(path, json_out) -> None:
    """What a checkpoint is: family, layout version (with evidence), sizes, hyper-parameters, optimizer state."""
    from .api import inspect

    info = inspect(path)
    if json_out:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(show_header=False, title=_text(os.path.basename(path)))
    for key in ("family", "layout", "format", "file_bytes", "tensors", "parameters", "tensor_bytes", "dtypes",
                "epoch", "global_step", "optimizer_states", "lr_schedulers", "pickled_class"):
        table.add_row(key, _text(info[key]))
    table.add_row("evidence", _text("\n".join(info["evidence"])))
    if info["notes"]:
        table.add_row("notes", _text("\n".join(info["notes"])))
    hp = info["hyper_parameters"] or {}
    table.add_row("hyper_parameters", _text(json.dumps(hp, default=str, indent=1)[:2000]))
    _console().print(table)


@main.command("history")
@click.argument("family", required=False)
def history_cmd(family) -> None:
    """The version graph of each family and the rule file on each edge."""
    from rich.tree import Tree

    from .errors import NotInvertibleError
    from .rules.graph import load_rule_files
    from .rules.inverse import invert_file

    files = [rf for rf in load_rule_files() if family in (None, rf.family)]
    if not files:
        raise AthelasError(f"no rule files for family {family!r}")
    con = _console()
    for fam in sorted({rf.family for rf in files}):
        tree = Tree(f"[bold]{fam}[/]")
        for rf in sorted((r for r in files if r.family == fam), key=lambda r: r.edge):
            try:
                invert_file(rf)
                back = "[green]invertible[/]"
            except NotInvertibleError as exc:
                back = f"[yellow]one-way[/]: {exc}"
            node = tree.add(f"{rf.source_version} -> {rf.target_version}  {rf.name}  "
                            f"[dim]{rf.digest[:12]}[/]  {back}")
            node.add(f"[dim]{rf.description} ({len(rf.rules)} rules, {len(rf.hparams)} hparam rules)[/]")
        con.print(tree)


def _register_optional() -> None:
    """Commands that live beside their feature modules (each imports only click at load time)."""
    import importlib

    for module, names in (("athelas_migrate.verify.cli", ("verify_cmd",)),
                          ("athelas_migrate.cli_models", ("train_cmd", "predict_cmd", "export_cmd", "demo_data_cmd")),
                          ("athelas_migrate.batch", ("batch_cmd", "merge_summaries_cmd")),
                          ("athelas_migrate.report.cli", ("report_cmd",))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            cmd = getattr(mod, name, None)
            if cmd is not None:
                main.add_command(cmd)


_register_optional()

__all__ = ["main", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_INTERNAL"]
