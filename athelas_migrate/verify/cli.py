"""`athelas-migrate verify OLD NEW`: the equivalence runner on the command line.

Only click, rich and the standard library are imported at module level, so
`--help` does not pay for torch. Exit codes: 0 every check passed, 1 something
differs, 2 usage error, 3 the comparison could not run.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

EXIT_OK, EXIT_DIFFERS, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 1, 2, 3


@click.command(
    "verify",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="""Prove that NEW (the migrated checkpoint) computes what OLD (the legacy one) did.

    Rebuilds OLD's model with the frozen legacy classes and NEW's with the refactored
    ones, runs both on the same inputs and compares logits and probabilities, every
    tensor, the training loss, every gradient and one optimizer step, and the
    sequence lengths where the legacy text branch is defined. When outputs differ it
    names the first module whose output diverges.

    Exit status: 0 all checks pass, 1 something differs, 2 usage error, 3 the
    comparison could not run.
    """,
)
@click.argument("old", type=click.Path(dir_okay=True, path_type=str))
@click.argument("new", type=click.Path(dir_okay=True, path_type=str))
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", type=float, default=0.0, show_default=True,
              help="Relative tolerance: |new - old| <= atol + rtol * |old|.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter OLD lacks (value parsed as JSON when valid JSON, else a string). Repeatable.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=str),
              help="JSON object of hyper-parameters (--set wins).")
@click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False, path_type=str),
              help="BERT families: the transformers config.json of the text encoder(s) (a JSON object; "
                   "for two texts that differ, {\"primary\": {...}, \"secondary\": {...}}).")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, path_type=str),
              help="Real batches (torch file loadable with weights_only=True; see docs/verify.md) instead of "
                   "generated ones.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where to run (cuda: TF32 off, deterministic kernels).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the full report as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a JUnit XML report (each check a testcase).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the HTML report page (module trees, charts, provenance; see docs/report.md).")
@click.option("--no-training", is_flag=True, help="Skip the training-equivalence section.")
@click.option("--no-domain", is_flag=True, help="Skip the sequence-length domain section.")
@click.option("-v", "--verbose", is_flag=True, help="List every check.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
@click.pass_context
def verify_cmd(ctx: click.Context, old: str, new: str, atol: float, rtol: float, sets: tuple[str, ...],
               config_file: str | None, bert_config: str | None, inputs_file: str | None, seed: int, device: str,
               json_path: str | None, junit_path: str | None, html_path: str | None, no_training: bool,
               no_domain: bool, verbose: bool, quiet: bool) -> None:
    out = Console()
    err = Console(stderr=True)
    from ..errors import AthelasError
    from ..overrides import parse_overrides

    try:
        overrides = parse_overrides(sets, config_file, bert_config)
        from .runner import run_verify

        report = run_verify(old, new, atol=atol, rtol=rtol, overrides=overrides, seed=seed, inputs=inputs_file,
                            device=device, json_path=json_path, junit_path=junit_path,
                            training=not no_training, domain=not no_domain, modules=bool(html_path))
    except AthelasError as exc:
        if html_path and getattr(exc, "report", None) is not None and exc.report.sections:
            _html(html_path, old, new, overrides, exc.report, atol, rtol, out, err)
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        ctx.exit(exc.exit_code)
        return
    except Exception as exc:  # a bug or an environment problem: still a clean, documented exit code
        err.print(f"[bold red]error:[/] verification could not run: {type(exc).__name__}: {exc}", highlight=False)
        ctx.exit(EXIT_CANNOT_RUN)
        return
    if quiet:
        state = "PASS" if report.passed else ("FAIL" if report.failed_checks() else "ERROR")
        out.print(f"{state} {old} -> {new}", highlight=False)
    else:
        from .terminal import render

        render(report, out, verbose=verbose)
    for label, path in (("JSON", json_path), ("JUnit", junit_path)):
        if path:
            out.print(f"{label} report written to {path}", style="dim", highlight=False)
    if html_path and not _html(html_path, old, new, overrides, report, atol, rtol, out, err):
        ctx.exit(4)  # EXIT_OUTPUT: the page could not be written
    ctx.exit(report.exit_code)


def _html(path: str, old: str, new: str, overrides: dict, report, atol: float, rtol: float, out: Console,
          err: Console) -> bool:
    """--html: the report page of this run; False (after saying why) when it cannot be written."""
    from ..errors import AthelasError
    from ..report.cli import write_html

    try:
        size = write_html(path, old, new, overrides, report, atol, rtol)
    except AthelasError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return False
    out.print(f"HTML report written to {path} ({size:,} bytes)", style="dim", highlight=False)
    return True


def main() -> None:  # pragma: no cover - `python -m athelas_migrate.verify.cli`
    sys.exit(verify_cmd.main(standalone_mode=True))


if __name__ == "__main__":  # pragma: no cover
    main()
