"""`athelas-migrate`: thin click commands over the API, rendered with rich.

Only click is imported at start-up; everything heavy is imported inside the
command that needs it, so `--help` answers instantly. Errors are mapped to exit
codes in one place (`_Group.invoke`): 0 ok, 1 check failed, 2 usage, 3 input refused, 4 cannot write
the output, 128+N killed by signal N during a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from .errors import EXIT_CHECK_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, AthelasError

#: Flags of the root command accepted anywhere on the line (`ckpt OLD NEW --debug` as well as `--debug ckpt`).
GLOBAL_FLAGS = ("--debug", "--allow-unknown-keys", "-q", "--quiet", "-v", "--verbose")


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        head, tail = args[:cut], args[cut:]
        hoisted = [a for a in head if a in GLOBAL_FLAGS]
        ctx.meta["athelas_json"] = "--json" in head  # errors of a --json run are JSON too
        return super().parse_args(ctx, hoisted + [a for a in head if a not in GLOBAL_FLAGS] + tail)

    def invoke(self, ctx: click.Context) -> Any:
        with error_boundary(bool(ctx.params.get("debug")), bool(ctx.meta.get("athelas_json"))):
            return super().invoke(ctx)


@contextlib.contextmanager
def error_boundary(debug: bool, json_mode: bool = False) -> Iterator[None]:
    """The one place errors become exit codes and one-line messages (commands usable on their own, like
    `verify`, enter it too, so they behave the same whether or not they run under the group). With `--json`
    the error is a JSON object on stdout: {"error", "exit_code", "kind"} (+ "needs", "skeleton")."""
    try:
        yield
    except AthelasError as exc:
        if debug:
            raise
        if json_mode:
            payload = {"error": str(exc), "exit_code": exc.exit_code, "kind": type(exc).__name__}
            if getattr(exc, "needs", None):
                payload["needs"] = [{"key": n.key, "why": n.why} for n in exc.needs]
                payload["skeleton"] = exc.skeleton
            click.echo(json.dumps(payload, indent=2, default=str))
        else:
            _err(str(exc))
            ctx = click.get_current_context(silent=True)
            if ctx is not None and ctx.meta.get("explain") and getattr(exc, "explanation", None):
                click.echo("\n".join(f"  - {line}" for line in exc.explanation), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP/SIGQUIT during a write (io.writer.Interrupted)
        _err("interrupted; no output was left behind")
        sys.exit(128 + getattr(exc, "signum", 2))
    except (click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except OSError as exc:
        if debug:
            raise
        _err(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(EXIT_REFUSED)
    except Exception as exc:  # a bug in this tool, not the user's fault
        if debug:
            raise
        _err(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        sys.exit(EXIT_INTERNAL)


def _err(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape  # messages quote file contents: '[/]' in a key must not be markup

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)


def busy(message: str):
    """A spinner with `message` on stderr while a command works, on a terminal only (silent when piped), so a
    step that takes seconds (imports, reading a large file, building BERT models) says what it is doing."""
    import contextlib

    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


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
write_config_option = click.option(
    "--write-config", "write_config", type=click.Path(dir_okay=False), default=None,
    help="When information is missing: write a config skeleton here (known values filled in, the missing ones "
         "marked) to complete and pass back with --config.")


def _needs_boundary(write_config: str | None, force: bool = False):
    """On a refusal for missing information, write the config skeleton it carries to `write_config`."""
    import contextlib

    from .errors import MissingInformationError

    @contextlib.contextmanager
    def boundary():
        try:
            yield
        except MissingInformationError as exc:
            if not write_config or exc.skeleton is None:
                raise
            from .io.writer import atomic_output
            from .outputs import prepare_output

            prepare_output(write_config, force)

            with atomic_output(write_config) as fh:
                fh.write((json.dumps(exc.skeleton, indent=2, sort_keys=True) + "\n").encode())
            raise MissingInformationError(f"{exc}\nwrote {write_config}: replace each \"<required...>\" value, "
                                          f"then rerun with --config {write_config}", exc.needs,
                                          exc.skeleton) from exc

    return boundary()


explain_option = click.option(
    "--explain", is_flag=True, expose_value=False,
    callback=lambda ctx, _param, value: ctx.meta.__setitem__("explain", True) if value else None,
    help="On a refusal that has reasons (e.g. TSA: no exact migration), list them.")
bert_option = click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
                           help="BERT families: the transformers config.json of the text encoder(s).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the result (any command).")
@click.option("-v", "--verbose", is_flag=True, help="Print more detail (any command).")
@click.option("--allow-unknown-keys", is_flag=True,
              help="Accept --set keys this tool does not know (recorded as given) instead of refusing them.")
@click.version_option(None, "-V", "--version", package_name="athelas-migrate")
def main(debug: bool, quiet: bool, verbose: bool, allow_unknown_keys: bool) -> None:
    """Migrate, verify and audit athelas Lightning checkpoints across layout versions.

    Exit codes: 0 success (NEW exists), 1 verification or check failed, 2 usage error,
    3 input refused (unreadable, unsafe, unknown layout, missing information), 4 cannot write
    the output, 128+N stopped by signal N, 70 internal error.
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
@explain_option
@click.option("--force", is_flag=True, help="Replace NEW if it exists (never OLD).")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
@write_config_option
def ckpt_cmd(old, new, to, sets, config_file, bert_config, new_batch_keys, dry_run, force, json_out,
             write_config) -> None:
    """Migrate checkpoint OLD into NEW (.ckpt, or .safetensors for weights plus metadata)."""
    from .api import migrate

    overrides = _overrides(sets, config_file, bert_config)
    if new_batch_keys:
        overrides["text_batch_key"] = None
    t0 = time.perf_counter()
    with _needs_boundary(write_config, force), busy(f"migrating {os.path.basename(old)}"):
        result = migrate(old, new, to=to, overrides=overrides, force=force, dry_run=dry_run)
    elapsed = time.perf_counter() - t0
    if json_out:
        click.echo(json.dumps(_result_summary(result, new, dry_run, elapsed), indent=2))
        return
    if click.get_current_context().find_root().params.get("quiet"):
        if not dry_run:
            click.echo(os.path.abspath(new))
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
        "written": None if dry_run else os.path.abspath(new), "seconds": round(elapsed, 3),
    }


def _render_result(result, new: str, dry_run: bool, elapsed: float) -> None:
    from rich.table import Table

    con = _console()
    s = _result_summary(result, new, dry_run, elapsed)
    con.print(f"[bold]{s['family']}[/] {s['from']} -> {s['to']}  ({_text(os.path.basename(s['source']))})")
    con.print("  detected by: " + _text("; ".join(s["evidence"])))
    if result.noop:
        what = "nothing written (dry run)" if dry_run else f"copied verbatim to {_text(new)}"
        con.print(f"[yellow]already at layout {s['to']}: no change needed; {what}[/]")
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
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
@write_config_option
@explain_option
def audit_cmd(old, to, sets, config_file, bert_config, fmt, output, force, write_config) -> None:
    """Report every rename, drop and hyper-parameter edit of migrating OLD, writing no checkpoint."""
    from .api import audit

    if output:
        from .outputs import prepare_output

        prepare_output(output, force, inputs=(old,))
    with _needs_boundary(write_config, force), busy(f"auditing {os.path.basename(old)}"):
        report = audit(old, to=to, overrides=_overrides(sets, config_file, bert_config))
    if fmt in ("json", "md"):
        text = report.to_json() if fmt == "json" else report.to_markdown()
        if output:
            from .io.writer import atomic_output

            with atomic_output(output) as fh:
                fh.write(text.encode())
            click.echo(f"wrote {output}", err=True)
        else:
            click.echo(text)
        return
    import shutil

    for line in report.to_text(shutil.get_terminal_size((80, 24)).columns):
        click.echo(line)


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
    needs = info.get("migration_needs") or []
    table.add_row("a migration needs", _text("\n".join(f"{n['key']}: {n['why']}" for n in needs) or "nothing more"))
    hp = info["hyper_parameters"] or {}
    flat = [f"{k}: {json.dumps(v, default=str)}" for k, v in hp.items()] if isinstance(hp, dict) else [str(hp)]
    table.add_row("hyper_parameters", _text("\n".join(line[:300] for line in flat[:200])))
    _console().print(table)


@main.command("history")
@click.argument("family", required=False)
def history_cmd(family) -> None:
    """The version graph of each family and the rule file on each edge."""
    from rich.tree import Tree

    from .errors import NotInvertibleError
    from .rules.graph import load_rule_files
    from .rules.inverse import hparam_rollback, invert_file

    if family is not None:
        from .errors import UsageError
        from .families import FAMILIES

        known = sorted({rf.family for rf in load_rule_files()} | set(FAMILIES))
        match = [k for k in known if k.lower() == family.lower()]
        if not match:
            raise UsageError(f"unknown family {family!r} (known: {', '.join(known)})")
        family = match[0]
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
            for h in rf.hparams:  # what a rollback puts back (the stamp records each value a set replaces)
                node.add(f"[dim]hparam rollback: {_text(hparam_rollback(h))}[/]")
        con.print(tree)


def _register_optional() -> None:
    """Commands that live beside their feature modules (each imports only click at load time).

    A module that fails to import still gets its commands, which say why when run (exit 70): a command
    never vanishes from `--help` because of a broken or partial installation."""
    import importlib

    for module, names in (("athelas_migrate.equivalence.cli", ("verify",)),
                          ("athelas_migrate.cli_models", ("train", "predict", "export", "demo-data")),
                          ("athelas_migrate.batch", ("batch", "merge-summaries")),
                          ("athelas_migrate.infer.cli", ("rules",)),
                          ("athelas_migrate.scaffold.cli", ("family",)),
                          ("athelas_migrate.report.cli", ("report",))):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            for name in names:
                main.add_command(_unavailable(name, module, exc))
            continue
        for name in names:
            main.add_command(getattr(mod, f"{name.replace('-', '_')}_cmd"))


class CommandUnavailableError(AthelasError):
    """A command's module failed to import (a broken installation or a bug): reported when it is run."""

    exit_code = EXIT_INTERNAL


def _unavailable(name: str, module: str, exc: ImportError) -> click.Command:
    reason = f"{type(exc).__name__}: {exc}"

    def run(args: tuple[str, ...]) -> None:
        raise CommandUnavailableError(f"command {name!r} is unavailable: importing {module} failed ({reason}); "
                                      "reinstall athelas-migrate with its dependencies")

    return click.Command(name, callback=run, help=f"(unavailable: {reason})", add_help_option=False,
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


_register_optional()

__all__ = ["main", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_INTERNAL"]
