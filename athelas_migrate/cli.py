"""`athelas-migrate`: thin click commands over the API, rendered with rich.

Only click is imported at start-up; everything heavy is imported inside the
command that needs it, so `--help` answers instantly. Errors are mapped to exit
codes in one place (`_Group.invoke`): 0 ok, 1 check failed, 2 usage, 3 input refused, 4 cannot write
the output, 128+N killed by signal N during a write.

To add a command: write it as a click command over an API function in its feature module (shared
options from `cli_options`, printing in a render module such as `cli_render`) and add one line to
COMMAND_MODULES.
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

from .cli_options import explain_option, needs_boundary, override_options, write_config_option
from .cli_render import console as _console
from .cli_render import literal as _text
from .cli_render import render_inspect, render_result, result_summary
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
    the error is a JSON object on stdout: {"error", "exit_code", "kind"} (+ "needs", "skeleton").

    Args:
        debug: let every exception through with its traceback (`--debug`).
        json_mode: report an `AthelasError` as a JSON object on stdout instead of a line on stderr.

    Yields:
        Nothing; the body runs inside the boundary, which exits the process on an error.
    """
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
    step that takes seconds (imports, reading a large file, building BERT models) says what it is doing.

    Args:
        message: what the command is doing, shown next to the spinner.

    Returns:
        A context manager: the spinner on a terminal, a no-op otherwise.
    """
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _overrides(sets: tuple[str, ...], config_file: str | None, bert_config: str | None = None) -> dict[str, Any]:
    from .overrides import parse_overrides

    return parse_overrides(sets, config_file, bert_config)


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
@override_options
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
    with needs_boundary(write_config, force), busy(f"migrating {os.path.basename(old)}"):
        result = migrate(old, new, to=to, overrides=overrides, force=force, dry_run=dry_run)
    elapsed = time.perf_counter() - t0
    if json_out:
        click.echo(json.dumps(result_summary(result, new, dry_run, elapsed), indent=2))
        return
    if click.get_current_context().find_root().params.get("quiet"):
        if not dry_run:
            click.echo(os.path.abspath(new))
        return
    render_result(result, new, dry_run, elapsed)


@main.command("audit")
@click.argument("old", type=click.Path(readable=False))
@click.option("--to", "to", default=None, help="Target layout version (default: newest).")
@override_options
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
    with needs_boundary(write_config, force), busy(f"auditing {os.path.basename(old)}"):
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
    render_inspect(path, info)


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
            if rf.since:
                node.add(f"since: {_text(rf.since)}")
            node.add(f"[dim]{rf.description} ({len(rf.rules)} rules, {len(rf.hparams)} hparam rules)[/]")
            for h in rf.hparams:  # what a rollback puts back (the stamp records each value a set replaces)
                node.add(f"[dim]hparam rollback: {_text(hparam_rollback(h))}[/]")
        con.print(tree)


#: Commands that live beside their feature modules, one line per module: (module, command names); a command
#: NAME is the module's `NAME_cmd` (dashes as underscores), a click command or group importing only click.
COMMAND_MODULES = (
    ("athelas_migrate.equivalence.cli", ("verify",)),
    ("athelas_migrate.cli_models", ("train", "predict", "export", "demo-data")),
    ("athelas_migrate.batch", ("batch", "merge-summaries")),
    ("athelas_migrate.infer.cli", ("rules",)),
    ("athelas_migrate.scaffold.cli", ("family",)),
    ("athelas_migrate.report.cli", ("report",)),
)


def _register_optional() -> None:
    """Add the commands of COMMAND_MODULES.

    A module that fails to import still gets its commands, which say why when run (exit 70): a command
    never vanishes from `--help` because of a broken or partial installation."""
    import importlib

    for module, names in COMMAND_MODULES:
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
