"""`athelas-migrate family new NAME`: registered by athelas_migrate/cli.py; only click is imported at load time."""

from __future__ import annotations

import click


@click.group("family")
def family_group() -> None:
    """Model families: scaffold a new one as a folder."""


@family_group.command("new")
@click.argument("name")
@click.option("--legacy", "legacy_spec", required=True, metavar="pkg.module:Class", help="The legacy class.")
@click.option("--legacy-args", type=click.Path(dir_okay=False), help="JSON object of its keyword arguments.")
@click.option("--target", "target_spec", required=True, metavar="pkg.module:Class", help="The refactored class.")
@click.option("--target-args", type=click.Path(dir_okay=False), help="JSON object of its keyword arguments.")
@click.option("--inputs", "inputs_path", required=True, type=click.Path(dir_okay=False),
              help="torch file holding a list of example inputs (each passed as model(x), a tuple as model(*x)).")
@click.option("--from", "src", default="v1", show_default=True, help="The legacy layout version.")
@click.option("--to", "dst", default="v2", show_default=True, help="The refactored layout version.")
@click.option("--into", "into", required=True, type=click.Path(file_okay=False),
              help="Directory to create the family folder in (DIR/<name in snake case>/).")
def new_cmd(name: str, legacy_spec: str, legacy_args: str | None, target_spec: str, target_args: str | None,
            inputs_path: str, src: str, dst: str, into: str) -> None:
    """Scaffold the family NAME: a folder with the Family, its verify adapter and ONNX spec, the inferred and
    proven rule file, the sample batch, a fixture generator and a test. Review the draft, then commit.

    Refused (nothing written) when the folder exists or a class does not import (exit 2), or when no mapping
    can be proven (exit 3).
    """
    from .build import scaffold

    result = scaffold(name, legacy_spec, legacy_args, target_spec, target_args, inputs_path, src, dst, into)
    click.echo(f"wrote {result.folder}/ ({len(result.files)} files): family {name} {src} -> {dst}")
    click.echo(f"  rule file {result.rule_file}: {result.rules} rule(s), proof max |diff| {result.worst:.3g}")
    click.echo(f"next: python {result.folder}/fixtures/generate.py; "
               f"ATHELAS_MIGRATE_FAMILIES={result.folder} pytest {result.folder}/tests; review the draft, commit")


family_cmd = family_group  # the name cli._register_optional looks up
