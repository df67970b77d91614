"""Build a family folder: construct both classes, infer and prove the rule file, render the templates, and move
the finished folder into place in one rename (a refusal or a failure leaves nothing behind)."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_keys import BOOL, INT, KEY_TYPES, LIST, NUMBER, OBJECT, STR
from ..errors import InputError, OutputError, OutputExistsError, UsageError
from ..families.simple import key_signatures
from ..infer.cli import construct, constructor_args
from ..infer.collapse import toml_value
from . import templates

#: Training steps of the generated fixture generator.
FIXTURE_STEPS = 4


@dataclass
class Scaffold:
    """What `scaffold` wrote."""

    folder: Path
    rule_file: str
    rules: int
    worst: float
    files: list[str] = field(default_factory=list)


def folder_name(name: str) -> str:
    """The family folder's (package's) name for the family `name`.

    Args:
        name: the family name, e.g. MyModel.

    Returns:
        Its snake case, e.g. my_model.

    Raises:
        UsageError: no Python identifier can be made of it, or it names a module that already exists.
    """
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    snake = re.sub(r"\W+", "_", snake).strip("_")
    if not snake.isidentifier() or not re.fullmatch(r"[A-Za-z][\w-]*", name):
        raise UsageError(f"family name {name!r}: use letters, digits, '_' or '-', starting with a letter")
    if snake in sys.stdlib_module_names or snake in sys.modules:
        raise UsageError(f"family name {name!r}: its folder would be named {snake!r}, like an existing module")
    return snake


def scaffold(name: str, legacy: str, legacy_args: str | None, target: str, target_args: str | None,
             inputs_path: str, src: str, dst: str, into: str) -> Scaffold:
    """Write `into/<folder>/` for the family `name` (see athelas_migrate/scaffold/cli.py for the files).

    Args:
        name: the family's name (rule files and stamps spell it so).
        legacy: "module:Class" of the legacy class.
        legacy_args: JSON file of its constructor keyword arguments (None: no arguments).
        target: "module:Class" of the refactored class.
        target_args: JSON file of its constructor keyword arguments (None: no arguments).
        inputs_path: torch file holding a list of example inputs.
        src: the layout version of the legacy class.
        dst: the layout version of the refactored class.
        into: the directory the folder is created in (created if missing).

    Returns:
        What was written.

    Raises:
        UsageError: a bad name or version, a class does not import or construct (exit 2).
        OutputExistsError: the folder exists (exit 2).
        InputError: the inputs are unreadable, or no mapping can be proven (exit 3).
        OutputError: the folder cannot be written (exit 4).
    """
    folder = folder_name(name)
    if not (re.fullmatch(r"v\d+", src) and re.fullmatch(r"v\d+", dst)) or int(src[1:]) >= int(dst[1:]):
        raise UsageError(f"--from {src} --to {dst}: versions are vN, the legacy one older than the target")
    dest = Path(into) / folder
    if dest.exists():
        raise OutputExistsError(f"{dest} exists; choose another --into or remove it")
    old_kwargs = constructor_args(legacy_args, "--legacy-args")
    new_kwargs = constructor_args(target_args, "--target-args")
    old = construct(legacy, old_kwargs, "--legacy")
    new = construct(target, new_kwargs, "--target")
    from ..infer.probe import load_example_inputs

    inputs = load_example_inputs(inputs_path)
    _require_lightning(old, "--legacy", legacy)
    from ..infer.core import RuleInferenceError, infer

    try:
        inferred = infer(old, new, inputs, name, src, dst)
    except RuleInferenceError as exc:
        raise InputError(f"cannot scaffold {name}: no mapping {legacy} -> {target} can be proven: {exc}") from None
    old_arg, new_arg = config_arg(type(old), old_kwargs), config_arg(type(new), new_kwargs)
    old_config = old_kwargs[old_arg] if old_arg else old_kwargs
    new_config = new_kwargs[new_arg] if new_arg else new_kwargs
    values = {"name": name, "cls": re.sub(r"\W", "", name[:1].upper() + name[1:]), "folder": folder,
              "legacy": legacy, "target": target, "src": src, "dst": dst, "fixture": f"{folder}_{src}.ckpt",
              "config_arg": {v: a for v, a in ((src, old_arg), (dst, new_arg)) if a},
              "key_types": new_key_types({**new_config, **old_config}),
              "old_signatures": repr(key_signatures(list(old.state_dict()))),
              "new_signatures": repr(key_signatures(list(new.state_dict()))),
              "legacy_args": old_kwargs, "legacy_config_arg": old_arg, "steps": FIXTURE_STEPS}
    rule_file = f"mappings/{name}/{src}-{dst}.toml"
    files = {"__init__.py": templates.INIT, "verify.py": templates.VERIFY, "onnx.py": templates.ONNX,
             "fixtures/generate.py": templates.GENERATE, f"tests/test_{folder}.py": templates.TEST}
    texts = {rel: text.format(**values) for rel, text in files.items()}
    texts[rule_file] = inferred.toml + hparam_rules(old_config, new_config)
    _write_folder(dest, texts, {"sample_inputs.pt": Path(inputs_path)})
    return Scaffold(dest, rule_file, len(inferred.evidence), inferred.proof.worst, sorted([*texts, "sample_inputs.pt"]))


def _require_lightning(model: Any, option: str, spec: str) -> None:
    import lightning.pytorch as pl

    if not isinstance(model, pl.LightningModule):
        raise UsageError(f"{option} {spec}: not a LightningModule (the fixture generator trains it with a Trainer)")


def config_arg(cls: type, kwargs: dict[str, Any]) -> str | None:
    """Whether `cls` takes its whole config as one dict (`Model(config={...})`, an AthelasModule).

    Args:
        cls: the model class.
        kwargs: the constructor arguments the user gave.

    Returns:
        The argument's name when `kwargs` is that one required argument holding a dict; else None (the config's
        keys are the keyword arguments).
    """
    params = [p for p in inspect.signature(cls.__init__).parameters.values()][1:]
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(kwargs) == 1 and required == list(kwargs) and isinstance(next(iter(kwargs.values())), dict):
        return required[0]
    return None


def new_key_types(config: dict[str, Any]) -> dict[str, str]:
    """Types of the config keys the tool does not know yet (for typed `--set KEY=VALUE`).

    Args:
        config: constructor arguments as read from JSON.

    Returns:
        Key -> a `config_keys` kind, from each value's JSON type; keys `KEY_TYPES` already knows are left out.
    """
    kinds = ((bool, BOOL), (int, INT), (float, NUMBER), (str, STR), (list, LIST), (dict, OBJECT))
    return {k: next(kind for t, kind in kinds if isinstance(v, t)) for k, v in config.items()
            if k not in KEY_TYPES and v is not None and isinstance(v, bool | int | float | str | list | dict)}


def hparam_rules(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`[[hparams]]` rules turning the legacy constructor's arguments into the target's: a key only the legacy
    takes is dropped (restored on rollback), a key only the target takes or whose value differs is set.
    A renamed key shows as a drop plus a set: review them and write a `rename` instead.

    Args:
        old: the legacy constructor's arguments.
        new: the target constructor's arguments.

    Returns:
        TOML text of the `[[hparams]]` tables (empty when the arguments agree).
    """
    out = []
    for key, value in old.items():
        if key not in new:
            out.append(f'[[hparams]]\nid = "drop-{key}"\nop = "drop"\nkey = "{key}"\n'
                       f'reason = "the target class does not take it"\nvalue = {toml_value(value)}\n')
    for key, value in new.items():
        if key not in old:
            out.append(f'[[hparams]]\nid = "set-{key}"\nop = "set"\nkey = "{key}"\nvalue = {toml_value(value)}\n'
                       "if_missing = true\n")
        elif old[key] != value:
            out.append(f'[[hparams]]\nid = "set-{key}"\nop = "set"\nkey = "{key}"\nvalue = {toml_value(value)}\n'
                       f"previous = {toml_value(old[key])}\n")
    return "".join("\n" + rule for rule in out)


def _write_folder(dest: Path, texts: dict[str, str], copies: dict[str, Path]) -> None:
    """Write the files into a temporary folder beside `dest`, then rename it to `dest` (all or nothing)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        for rel, text in texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        for rel, src in copies.items():
            shutil.copyfile(src, tmp / rel)
        os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.exists():
            raise OutputExistsError(f"{dest} exists; choose another --into or remove it") from None
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
