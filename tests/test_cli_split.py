"""Issue 13, items 5-6: the CLI is a thin layer whose shared options cannot drift, verify maps a bug to exit 70
and an unbuildable model to 3, the reports format numbers in one place, and the split modules stay small."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from athelas_migrate import api, cli_options
from athelas_migrate.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "fixtures" / "text_cnn_v1.ckpt"
#: the commands that read a checkpoint's hyper-parameters through this package's shared options
OVERRIDE_COMMANDS = ("ckpt", "audit", "verify", "batch")


@pytest.mark.parametrize("command", OVERRIDE_COMMANDS)
def test_commands_that_take_hyper_parameters_take_the_same_options(command):
    """`batch` once lacked `--bert-config`: each command now takes the one definition of all three."""
    shared = {p.name: p for p in _params(cli_options.override_options(lambda **kw: None))}
    params = {p.name: p for p in main.commands[command].params}
    for name, option in shared.items():
        assert name in params, f"{command} lacks {option.opts}"
        assert (params[name].opts, params[name].help) == (option.opts, option.help), f"{command} {option.opts}"


def _params(func) -> list:
    return list(func.__click_params__)


@pytest.fixture(scope="module")
def text_v2(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("v2") / "text_cnn_v2.ckpt"
    api.migrate(TEXT, dst)
    return dst


@pytest.mark.parametrize("fault, code", [(AttributeError("a bug in the adapter"), 70),
                                         (RuntimeError("size mismatch for embedding.weight"), 3)])
def test_verify_maps_a_bug_building_the_legacy_model_to_70_and_a_bad_input_to_3(monkeypatch, text_v2, fault, code):
    from athelas_migrate.equivalence.adapters import get_adapter

    def build_old(ctx, state):
        raise fault

    monkeypatch.setattr(get_adapter("TextCNN"), "build_old", build_old)
    res = CliRunner().invoke(main, ["verify", str(TEXT), str(text_v2), "--no-training", "--no-domain"])
    assert res.exit_code == code, res.output
    assert str(fault) in res.output and "Traceback" not in res.output


def test_gate_and_html_report_format_numbers_with_one_function():
    from athelas_migrate.report.render import _env, format_number

    assert [format_number(x) for x in (None, "n/a", 0, 0.0, 1.5e-6, float("inf"), float("nan"))] == \
        ["-", "n/a", "0", "0", "1.500e-06", "inf", "nan"]
    assert format_number(1.5e-6, 1) == "1.5e-06"
    assert _env().globals["fmt"] is format_number
    spec = importlib.util.spec_from_file_location("gate_under_test", ROOT / "tools" / "gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    assert gate.format_number is format_number and not hasattr(gate, "_fmt")


SPLIT = ["athelas_migrate/cli.py", "athelas_migrate/cli_options.py", "athelas_migrate/cli_render.py",
         "athelas_migrate/batch.py", "athelas_migrate/batch_summary.py", "athelas_migrate/batch_render.py",
         "athelas_migrate/equivalence/cli.py", "athelas_migrate/equivalence/runner.py",
         "athelas_migrate/equivalence/environment.py", "athelas_migrate/equivalence/pairing.py",
         "athelas_migrate/equivalence/build.py", "athelas_migrate/equivalence/weights.py",
         "athelas_migrate/equivalence/forward.py"]


@pytest.mark.parametrize("path", SPLIT)
def test_split_modules_stay_small_with_short_documented_functions(path):
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    assert len(source.splitlines()) <= 400
    assert ast.get_docstring(tree), "module docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body  # the docstring is not code
            assert not body or node.end_lineno - body[0].lineno + 1 <= 60, f"{node.name} has more than 60 lines of code"
            if not node.name.startswith("_") and node.col_offset == 0:
                doc = ast.get_docstring(node) or ""
                args = [a.arg for a in node.args.args if a.arg not in ("self", "ctx")]
                if len(args) > 2 and not node.decorator_list:  # click commands document themselves as --help
                    assert "Args:" in doc, f"{node.name}: no Args section"
