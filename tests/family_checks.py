"""What makes a family complete, as one function: bundled families (tests/test_families_complete.py) and the
out-of-tree toy family (tests/test_toy_family.py) are held to the same list."""

from __future__ import annotations

import inspect as pyinspect
import json
from pathlib import Path


def manifest_families(folder: Path) -> set[str]:
    """The families that have a fixture listed in a `*manifest.json` of `folder`."""
    return {e["family"] for m in folder.glob("*manifest.json") for e in json.loads(m.read_text())}


def check_family_complete(fam, fixture_families: set[str]) -> None:
    """Assert `fam` has every part: a legacy class per old version, the refactored class (an AthelasModule), a
    rule chain from every version to `latest`, which is the rule graph's head, a verify adapter, an ONNX input
    spec, historical class paths naming real classes, and a fixture (its family in `fixture_families`)."""
    from athelas_migrate.equivalence.adapters import VerifyAdapter
    from athelas_migrate.families.base import load_class
    from athelas_migrate.models import AthelasModule
    from athelas_migrate.rules.graph import head, plan_path

    name = fam.name
    assert head(name) == fam.latest, "the family's newest layout must be its rule graph's head"
    target = load_class(fam.v2_class)
    assert issubclass(target, AthelasModule)
    assert target.layout_version == fam.latest, "the refactored class stamps the family's newest layout"
    assert fam.legacy_classes, "a legacy class per old version"
    for version, classpath in fam.legacy_classes.items():
        assert load_class(classpath) is not None
        assert plan_path(name, version, fam.latest), f"no rule chain {version} -> {fam.latest}"
    adapter = load_class(fam.verify_adapter)() if fam.verify_adapter else None
    assert isinstance(adapter, VerifyAdapter) and adapter.family == name, "a verify adapter (Family.verify_adapter)"
    assert callable(load_class(fam.onnx_spec)), "an ONNX input spec (Family.onnx_spec)"
    for classpath in fam.historical_classes.values():
        assert isinstance(load_class(classpath), type)
    assert name in fixture_families, "a fixture listed in a fixtures/*manifest.json"


def check_family_in_one_folder(fam) -> Path:
    """Assert the family's class is defined in a family folder (a package) and that what it names by reference in
    the folder (`verify.py`, `onnx.py`) lies in that same folder. Returns the folder."""
    module = type(fam).__module__
    folder = Path(pyinspect.getfile(type(fam))).parent
    assert (folder / "__init__.py").is_file(), folder
    package = module if Path(pyinspect.getfile(type(fam))).name == "__init__.py" else module.rpartition(".")[0]
    for ref in (fam.verify_adapter, fam.onnx_spec):
        if ref:
            assert ref.partition(":")[0].startswith(f"{package}."), ref
    return folder
