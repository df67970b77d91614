"""The whole-module class paths (pickled legacy models) are an explicit list that families extend by
registering their historical class paths; nothing else mints module stubs."""

from __future__ import annotations

import pytest
from conftest import P2, G, S

from athelas_migrate.errors import UnsafeCheckpointError
from athelas_migrate.io import safe_unpickle
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.unpickling import class_paths
from athelas_migrate.io.zip_archive import Member, write_members

NEW = "mycorp.models.lightning.pl_net.Net"


@pytest.fixture
def registry(monkeypatch):
    """Registration is process-wide: restore the list after each test."""
    monkeypatch.setattr(class_paths, "_paths", class_paths._paths)
    return class_paths


def _module_pickle(classpath: str) -> bytes:
    """`torch.save(model)` of an instance of `classpath` with an empty `__dict__` (REDUCE, then BUILD)."""
    return P2 + G(*classpath.rsplit(".", 1)) + b")R}" + S("training") + b"\x88sb."


def _torch_zip(path, pkl: bytes):
    with open(path, "wb") as fh:
        write_members(fh, [Member("archive/data.pkl", pkl), Member("archive/byteorder", b"little")])
    return path


def test_default_list_is_explicit():
    """The legacy families' paths are checked against `legacy` in test_unpickle_safety (importing it is slow)."""
    paths = safe_unpickle.module_class_paths()
    assert len(paths) == 13 + 34  # 13 historical class paths, 34 torch layers
    assert {"torch.nn.modules.linear.Linear", "torch.nn.modules.container.Sequential"} <= paths
    assert all(p.startswith(("athelas.models.", "torch.nn.modules.")) for p in paths)


def test_a_registered_class_path_loads_as_a_pickled_module(registry, tmp_path):
    path = _torch_zip(tmp_path / "net.pt", _module_pickle(NEW))
    assert safe_unpickle.classify(*NEW.rsplit(".", 1)) == "refused"
    with pytest.raises(UnsafeCheckpointError, match=NEW):
        read_checkpoint(path)

    registry.register_historical_class_paths([NEW])
    registry.register_historical_class_paths((NEW,))  # again: harmless
    assert NEW in safe_unpickle.module_class_paths()
    assert safe_unpickle.classify(*NEW.rsplit(".", 1)) == "module"
    raw = read_checkpoint(path)
    assert raw.kind == "pickled_module" and raw.module_classpath == NEW


def test_a_registered_class_is_still_refused_below_a_plain_root(registry, tmp_path):
    registry.register_historical_class_paths([NEW])
    nested = P2 + b"}" + S("state_dict") + b"}" + S("model") + G(*NEW.rsplit(".", 1)) + b")R" + b"s."
    with pytest.raises(UnsafeCheckpointError, match=NEW):
        safe_unpickle.unpickle(nested, lambda *a: None)


@pytest.mark.parametrize("paths, error", [
    (NEW, TypeError),  # one string, not a collection: would register its letters
    ([NEW, 3], TypeError),
    (["Net"], ValueError),  # no module
    (["mycorp..Net"], ValueError),
    (["mycorp.models.1Net"], ValueError),
    (["mycorp.models.Net; import os"], ValueError),
    (["mycorp.Nét"], ValueError),  # ASCII identifiers only: no look-alike names
    (["a." * 120 + "Net"], ValueError),
])
def test_malformed_class_paths_are_refused_and_nothing_is_registered(registry, paths, error):
    before = registry.module_class_paths()
    with pytest.raises(error):
        registry.register_historical_class_paths(paths)
    assert registry.module_class_paths() == before
