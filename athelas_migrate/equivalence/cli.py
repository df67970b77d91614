"""`athelas-migrate verify OLD NEW`: the equivalence runner on the command line.

Only click, rich and the standard library are imported at module level, so
`--help` does not pay for torch. Errors go through the CLI's one error boundary
(`athelas_migrate.cli.error_boundary`), run under `athelas-migrate` or on its own:
0 every check passed, 1 something differs or a check could not run, 2 usage error,
3 input refused, 70 internal error. Checkpoint-derived text is printed literally.
"""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.text import Text

from ..cli_options import override_options


@click.command(
    "verify",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="""Prove that NEW (the migrated checkpoint) computes what OLD (the legacy one) did.

    Rebuilds OLD's model with the frozen legacy classes and NEW's with the refactored
    ones, runs both on the same inputs and compares logits and probabilities, every
    tensor, the training loss, every gradient and one optimizer step, and the
    sequence lengths where the legacy text branch is defined. When outputs differ it
    names the first module whose output diverges.

    Exit status: 0 all checks pass, 1 something differs or a check could not run,
    2 usage error, 3 an input was refused, 70 internal error.
    """,
)
@click.argument("old", type=click.Path(dir_okay=True, path_type=str))
@click.argument("new", type=click.Path(dir_okay=True, path_type=str))
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", type=float, default=0.0, show_default=True,
              help="Relative tolerance: |new - old| <= atol + rtol * |old|.")
@override_options
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, path_type=str),
              help="Real batches (torch file loadable with weights_only=True; see docs/verify.md) instead of "
                   "generated ones.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where to run (cuda: TF32 off, deterministic kernels).")
@click.option("--json", "json_out", is_flag=True, help="Print the full report as JSON on stdout (and nothing else).")
@click.option("--json-report", "json_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the full report as JSON to this file.")
@click.option("--force", is_flag=True, help="Replace existing report files.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a JUnit XML report (each check a testcase).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the HTML report page (module trees, charts, provenance; see docs/report.md).")
@click.option("--no-training", is_flag=True, help="Skip the training-equivalence section (= --skip-check training).")
@click.option("--no-domain", is_flag=True, help="Skip the sequence-length domain section (= --skip-check domain).")
@click.option("--skip-check", "skip_checks", multiple=True, type=click.Choice(["training", "domain", "optimizer"]),
              help="Opt out of a check (recorded as 'skipped' in every report). A check that cannot run and was "
                   "not skipped is an error. Repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="List every check.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
@click.pass_context
def verify_cmd(ctx: click.Context, old: str, new: str, atol: float, rtol: float, sets: tuple[str, ...],
               config_file: str | None, bert_config: str | None, inputs_file: str | None, seed: int, device: str,
               json_out: bool, json_path: str | None, force: bool, junit_path: str | None, html_path: str | None,
               no_training: bool,
               no_domain: bool, skip_checks: tuple[str, ...], verbose: bool, quiet: bool) -> None:
    from ..cli import error_boundary
    from ..outputs import prepare_output

    root = ctx.find_root()
    quiet = quiet or bool(root.params.get("quiet"))  # -q/-v also work before the command name
    verbose = verbose or bool(root.params.get("verbose"))
    with error_boundary(bool(root.params.get("debug")) if root is not ctx else False, json_out):
        from ..outputs import read_inputs_first

        for path in (json_path, junit_path, html_path):
            if path:
                prepare_output(path, force, inputs=(old, new))
        from ..overrides import parse_overrides

        overrides = parse_overrides(sets, config_file, bert_config)  # usage errors first, before heavy imports
        read_inputs_first(old, new)
        from ..cli import busy

        with busy(f"verifying {os.path.basename(old)} against {os.path.basename(new)}"):
            report = _run(old, new, atol, rtol, overrides, inputs_file, seed, device, json_path, junit_path,
                          no_training, no_domain, skip_checks, modules=bool(html_path))
        if json_out:
            import json

            click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            _print(report, old, new, json_path, junit_path, verbose, quiet)
        if html_path:
            from ..report.cli import write_html

            size = write_html(html_path, old, new, overrides, report, atol, rtol)
            if not json_out:
                Console().print(Text(f"HTML report written to {html_path} ({size:,} bytes)", style="dim"))
    ctx.exit(report.exit_code)


def _print(report, old: str, new: str, json_path: str | None, junit_path: str | None, verbose: bool,
           quiet: bool) -> None:
    """The summary (or with -q the verdict line); paths are printed literally, never as rich markup."""
    out = Console()
    if quiet:
        state = "PASS" if report.passed else ("FAIL" if report.failed_checks() else "ERROR")
        out.print(Text(f"{state} {old} -> {new}"), soft_wrap=True)
    else:
        from .terminal import render

        render(report, out, verbose=verbose)
    for label, path in (("JSON", json_path), ("JUnit", junit_path)):
        if path:
            out.print(Text(f"{label} report written to {path}", style="dim"), soft_wrap=True)


def _run(old: str, new: str, atol: float, rtol: float, overrides: dict, inputs_file: str | None, seed: int,
         device: str, json_path: str | None, junit_path: str | None, no_training: bool, no_domain: bool,
         skip_checks: tuple[str, ...], modules: bool = False):
    from .runner import run_verify

    return run_verify(old, new, atol=atol, rtol=rtol, overrides=overrides, seed=seed, inputs=inputs_file,
                      device=device, json_path=json_path, junit_path=junit_path, training=not no_training,
                      domain=not no_domain, skip=skip_checks, modules=modules)


def main() -> None:  # pragma: no cover - `python -m athelas_migrate.equivalence.cli`
    """Run `verify` as a program of its own, exiting with its exit code."""
    sys.exit(verify_cmd.main(standalone_mode=True))


if __name__ == "__main__":  # pragma: no cover
    main()
