"""Every registered family is complete: a legacy class per old version, the refactored class, a rule chain from
every version to the newest, `latest` equal to the rule graph's head, a verify adapter, an ONNX input spec,
historical class paths that name real frozen classes, and a fixture; each is defined in its own folder. And the
version graph is validated when the rule files load (one head, no cycle)."""

from __future__ import annotations

import pytest
from conftest import FIXTURES
from family_checks import check_family_complete, check_family_in_one_folder, manifest_families

from athelas_migrate.errors import VersionGraphError
from athelas_migrate.families import FAMILIES
from athelas_migrate.families.base import load_class
from athelas_migrate.rules.graph import head, load_rule_files

#: Recognised so that they can be refused with a reason (no exact migration exists); they have no rules.
REFUSED = {"TSASingleSeq", "TSADualSeq"}
MIGRATABLE = sorted(set(FAMILIES) - REFUSED)


def test_the_refused_families_have_no_rules():
    assert REFUSED <= set(FAMILIES)
    assert all(head(name) is None for name in REFUSED)


@pytest.mark.parametrize("name", MIGRATABLE)
def test_family_is_complete(name):
    check_family_complete(FAMILIES[name], manifest_families(FIXTURES))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_lives_in_one_folder(name):
    """Its class is defined in a family folder (a subpackage of families/), and what it names by reference in
    the folder (`verify.py`, `onnx.py`) lies in that same folder."""
    folder = check_family_in_one_folder(FAMILIES[name])
    assert folder.parent.name == "families", folder


def test_the_reader_allows_exactly_the_families_historical_class_paths():
    """The restricted reader's whole-module allowlist is the families' declarations plus torch layers."""
    from athelas_migrate.io.safe_unpickle import module_class_paths

    declared = {path for fam in FAMILIES.values() for path in fam.historical_classes}
    assert {p for p in module_class_paths() if not p.startswith("torch.nn.modules.")} == declared


def test_historical_class_paths_are_declared_by_the_families_alone():
    """The frozen legacy package maps exactly the class paths the families declare (one source of truth)."""
    import legacy

    declared = {path: ref for fam in FAMILIES.values() for path, ref in fam.historical_classes.items()}
    assert {path: cls for path, cls in legacy.all_class_paths().items()} == \
        {path: load_class(ref) for path, ref in declared.items()}


def _rule_file(root, family, source, target):
    folder = root / family
    folder.mkdir(exist_ok=True)
    (folder / f"{source}-{target}.toml").write_text(
        f'family = "{family}"\nfrom = "{source}"\nto = "{target}"\ndescription = "test"\n\n'
        "[[rules]]\nid = \"all\"\nop = \"rename\"\nmatch = '^(.*)$'\nto = '\\1'\n")


def test_a_cycle_in_the_rule_files_is_refused_when_they_load(tmp_path):
    for source, target in (("v0", "v1"), ("v1", "v2"), ("v2", "v0")):
        _rule_file(tmp_path, "Toy", source, target)
    with pytest.raises(VersionGraphError, match="cycle") as info:
        load_rule_files(str(tmp_path))
    assert info.value.family == "Toy" and set(info.value.versions) == {"v0", "v1", "v2"}


def test_two_heads_are_refused_when_the_rule_files_load(tmp_path):
    _rule_file(tmp_path, "Toy", "v0", "v1")
    _rule_file(tmp_path, "Toy", "v0", "v2")
    with pytest.raises(VersionGraphError, match="2 newest versions") as info:
        load_rule_files(str(tmp_path))
    assert info.value.versions == ("v1", "v2")


def test_a_latest_that_is_not_the_head_is_refused(monkeypatch):
    from athelas_migrate.pipeline import check_latest

    fam = FAMILIES["TabAE"]
    check_latest(fam)
    monkeypatch.setattr(fam, "latest", "v1")
    with pytest.raises(VersionGraphError, match="end at v2") as info:
        check_latest(fam)
    assert info.value.family == "TabAE"


def test_the_fusion_whitelist_copy_equals_the_legacy_one():
    from athelas_migrate.families.bert import LEGACY_SAVED_HPARAMS
    from legacy.bert._common import SAVED_HPARAM_KEYS

    assert LEGACY_SAVED_HPARAMS == SAVED_HPARAM_KEYS
