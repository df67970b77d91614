"""`athelas-migrate report OLD NEW -o PAGE.html`: verify OLD -> NEW and write the HTML report page.

Only click is imported at load time (the CLI's `--help` stays instant). Exit status: verify's (0 every
check passed, 1 something differs, 3 the comparison could not run) once the page is written, even a
failing one (that is when a reviewer needs it); 2 usage; 4 the page cannot be written.
"""

from __future__ import annotations

import os
from typing import Any

import click


def write_html(path: str, old: str, new: str, overrides: dict[str, Any], report: Any, atol: float,
               rtol: float) -> int:
    """Write the page of OLD -> NEW, whose commands re-render it at `path`.

    Args:
        path: the HTML file (replaced atomically).
        old: the source checkpoint.
        new: the migrated checkpoint.
        overrides: hyper-parameters supplied for OLD.
        report: a VerifyReport (possibly holding only an error), or None.
        atol: the tolerance the commands show.
        rtol: likewise.

    Returns:
        The page's size in bytes.
    """
    from . import page_for, report_commands, write_page

    commands = report_commands(old, new, overrides, path, atol, rtol)
    return write_page(page_for(old, new, overrides, report, commands=commands), path)


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("old", type=click.Path(readable=False))
@click.argument("new", type=click.Path(readable=False))
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (replaced atomically).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter OLD lacks (VALUE parsed as JSON when valid JSON).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON object of hyper-parameters (like --set).")
@click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
              help="BERT families: the transformers config.json of the text encoder(s).")
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--rtol", type=float, default=0.0, show_default=True)
@click.option("--no-verify", is_flag=True, help="Only the module trees and provenance (no equivalence run).")
@click.pass_context
def report_cmd(ctx: click.Context, old: str, new: str, output: str, sets: tuple[str, ...], config_file: str | None,
               bert_config: str | None, atol: float, rtol: float, no_verify: bool) -> None:
    """Write one self-contained HTML page for the migration OLD -> NEW: module trees with every key's
    mapping, where the numbers agree, the sequence-length domain, the training step, the provenance."""
    from ..errors import AthelasError, UsageError
    from ..overrides import parse_overrides

    if os.path.abspath(output) in (os.path.abspath(old), os.path.abspath(new)):
        raise UsageError(f"-o {output} would overwrite an input")
    overrides = parse_overrides(sets, config_file, bert_config)
    report, error = None, None
    if not no_verify:
        from ..equivalence.runner import run_verify

        try:
            report = run_verify(old, new, atol=atol, rtol=rtol, overrides=overrides, modules=True)
        except AthelasError as exc:
            report, error = getattr(exc, "report", None), exc
            if report is None or not report.sections:
                raise  # nothing to show: refused before any check ran
    size = write_html(output, old, new, overrides, report, atol, rtol)
    verdict = "not verified" if report is None else ("passed" if report.passed else "FAILED")
    click.echo(f"report written to {output} ({size:,} bytes; {verdict})")
    if error is not None:
        raise error
    ctx.exit(report.exit_code if report is not None else 0)
