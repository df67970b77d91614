"""`athelas-migrate rules infer`: draft and prove a rule file from two model classes and a sample batch.

Registered by cli.py's `_register_optional`; only click is imported at load time.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import OutputError, OutputExistsError, UsageError


@click.group("rules")
def rules_group() -> None:
    """Rule files: infer a draft from an old and a new model."""


def construct(spec: str, kwargs: dict[str, Any], option: str) -> Any:
    """An instance of the class named `spec`, built with `kwargs` (how `rules infer` and `family new` build models).

    Args:
        spec: "package.module:Class"; modules beside the working directory resolve, as with `python -m`.
        kwargs: its constructor's keyword arguments.
        option: the CLI option that named the class, for messages.

    Returns:
        The model.

    Raises:
        UsageError: a malformed spec, a class that does not import, or a constructor that rejects `kwargs`.
    """
    if ":" not in spec or spec.count(":") != 1:
        raise UsageError(f"{option} {spec!r}: expected 'package.module:Class'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules beside the user resolve
    import importlib

    module, name = spec.split(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{option} {spec!r}: cannot import it ({type(exc).__name__}: {exc})") from None
    try:
        return cls(**kwargs)
    except Exception as exc:  # the user's constructor rejected the arguments
        raise UsageError(f"{option} {spec!r}: cannot construct it with {sorted(kwargs)}: "
                         f"{type(exc).__name__}: {exc}") from None


def constructor_args(path: str | None, option: str) -> dict[str, Any]:
    """The JSON object of constructor keyword arguments in `path` (none without a file).

    Args:
        path: the `*-args` file, or None.
        option: the CLI option that named it, for messages.

    Returns:
        The keyword arguments.
    """
    from ..overrides import read_json_object

    return read_json_object(path, option) if path else {}


def _edge(out: str, family: str | None, src: str | None, dst: str | None) -> tuple[str, str, str]:
    """Defaults from an output path laid out like mappings/: FAMILY/vA-vB.toml."""
    p = Path(out)
    m = re.fullmatch(r"(v[^-]+)-(v[^-]+)", p.stem)
    family = family or p.parent.name or None
    src = src or (m.group(1) if m else None)
    dst = dst or (m.group(2) if m else None)
    if not (family and src and dst):
        raise UsageError(f"-o {out}: name it FAMILY/vA-vB.toml or give --family, --from and --to")
    return family, src, dst


def _write(out: str, text: str, force: bool) -> None:
    from ..io.writer import atomic_output

    if os.path.exists(out) and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with atomic_output(out) as fh:
            fh.write(text.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


@rules_group.command("infer")
@click.option("--old", "old_spec", required=True, metavar="pkg.module:Class", help="The old model class.")
@click.option("--old-args", type=click.Path(dir_okay=False), help="JSON object of the old class's keyword arguments.")
@click.option("--new", "new_spec", required=True, metavar="pkg.module:Class", help="The new model class.")
@click.option("--new-args", type=click.Path(dir_okay=False), help="JSON object of the new class's keyword arguments.")
@click.option("--inputs", "inputs_path", required=True, type=click.Path(dir_okay=False),
              help="torch file holding a list of example inputs (each passed as model(x), a tuple as model(*x)).")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Rule file to write (e.g. mappings/MyModel/v2-v3.toml).")
@click.option("--family", default=None, help="Family name (default: the output's folder name).")
@click.option("--from", "src", default=None, help="Source version (default: from the output name vA-vB.toml).")
@click.option("--to", "dst", default=None, help="Target version (default: from the output name).")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Proof tolerance.")
@click.option("--explain", is_flag=True, help="Print the evidence for each rule.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def infer_cmd(old_spec: str, old_args: str | None, new_spec: str, new_args: str | None, inputs_path: str, out: str,
              family: str | None, src: str | None, dst: str | None, atol: float, explain: bool, force: bool) -> None:
    """Infer the rules mapping OLD's state dict onto NEW's, prove them, write the rule file.

    Every other input probes the models, the rest prove the rules (outputs within --atol after a strict
    load). Exit 1 when no mapping can be proven (the message names what could not be placed, or the
    first module whose output diverges).
    """
    from .core import infer

    family, src, dst = _edge(out, family, src, dst)
    if os.path.exists(out) and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    from .probe import load_example_inputs

    old = construct(old_spec, constructor_args(old_args, "--old-args"), "--old")
    new = construct(new_spec, constructor_args(new_args, "--new-args"), "--new")
    inputs = load_example_inputs(inputs_path)
    result = infer(old, new, inputs, family, src, dst, atol=atol)
    _write(out, result.toml, force)
    click.echo(f"wrote {out}: {len(result.evidence)} rules, {family} {src} -> {dst} "
               f"({result.seconds:.2f} s, {result.local_tests} local tests)")
    click.echo(f"proof on {result.proof_inputs} input(s) not used for inference (atol {atol:g}):")
    for label, diff in result.proof.diffs:
        click.echo(f"  {label}: max |diff| {diff:.3g}")
    for note in result.notes:
        click.echo(f"note: {note}")
    if explain:
        for rid, lines in result.evidence:
            click.echo(f"{rid}:")
            for line in lines:
                click.echo(f"  - {line}")


rules_cmd = rules_group  # the name cli._register_optional looks up
