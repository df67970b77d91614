"""Click options that several commands share, defined once so the commands cannot drift apart.

Every command that reads a checkpoint's hyper-parameters takes `override_options` (`--set`, `--config`,
`--bert-config`), parsed by `overrides.parse_overrides`; a command that migrates takes `write_config_option`
and `explain_option` as well. A new shared option goes here, and into the commands' test in
tests/test_cli_split.py. Only click is imported: `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import click

set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Hyper-parameter the checkpoint lacks (VALUE parsed as JSON when valid JSON). "
                               "Repeatable.")
config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                             help="JSON object of hyper-parameters (like --set; --set wins).")
bert_option = click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
                           help="BERT families: the transformers config.json of the text encoder(s) (a JSON "
                                "object; for two texts that differ, {\"primary\": {...}, \"secondary\": {...}}).")
write_config_option = click.option(
    "--write-config", "write_config", type=click.Path(dir_okay=False), default=None,
    help="When information is missing: write a config skeleton here (known values filled in, the missing ones "
         "marked) to complete and pass back with --config.")
explain_option = click.option(
    "--explain", is_flag=True, expose_value=False,
    callback=lambda ctx, _param, value: ctx.meta.__setitem__("explain", True) if value else None,
    help="On a refusal that has reasons (e.g. TSA: no exact migration), list them.")


def override_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--set`, `--config` and `--bert-config` (parameters `sets`, `config_file`, `bert_config`).

    Args:
        command: the command function to decorate.

    Returns:
        The decorated function.
    """
    return set_option(config_option(bert_option(command)))


@contextlib.contextmanager
def needs_boundary(write_config: str | None, force: bool = False) -> Iterator[None]:
    """On a refusal for missing information, write the config skeleton it carries to `write_config`.

    Args:
        write_config: where to write the skeleton (None: the refusal passes through unchanged).
        force: replace an existing file.

    Yields:
        Nothing; the body runs inside the boundary.

    Raises:
        MissingInformationError: re-raised, naming the file written and how to pass it back.
    """
    from .errors import MissingInformationError

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
