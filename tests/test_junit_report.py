"""JUnit from `verify --junit` (and the gate): suite names unique per file pair, times that add up."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from athelas_migrate.equivalence.report import Check, Section, VerifyReport, junit_document


def _report(old: str, new: str, duration: float = 5.0) -> VerifyReport:
    rep = VerifyReport(old=old, new=new, atol=1e-5, rtol=0.0, family="BimodalCNN", duration_s=duration)
    build = Section("build", "Build", [Check("load", "pass", duration_s=0.25)], duration_s=1.5)
    outputs = Section("outputs", "Eval-mode outputs", [Check("logits", "pass", duration_s=0.5),
                                                        Check("probabilities", "fail", duration_s=0.25)])
    rep.sections = [build, outputs]
    return rep


def test_suite_names_are_unique_per_file_pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _report("runs/a/legacy.ckpt", "out/a/new.ckpt").junit_suites()
    b = _report("runs/b/legacy.ckpt", "out/b/new.ckpt").junit_suites()
    names = [s.get("name") for s in a + b]
    assert len(set(names)) == len(names) == 4
    assert names[0] == "runs/a/legacy.ckpt -> out/a/new.ckpt / Build"
    outside = _report(os.path.join(os.path.dirname(tmp_path), "x", "legacy.ckpt"), "new.ckpt").junit_suites()
    assert outside[0].get("name").startswith(os.path.dirname(tmp_path) + os.sep)  # outside the cwd: absolute
    assert _report("a.ckpt", "b.ckpt").junit_suites(prefix="fixture.ckpt")[0].get("name") == "fixture.ckpt / Build"


def test_times_add_up_to_the_run(tmp_path):
    root = ET.fromstring(_report("old.ckpt", "new.ckpt", duration=5.0).to_junit())
    suites = {s.get("name").rpartition(" / ")[2]: s for s in root.findall("testsuite")}
    assert float(suites["Build"].get("time")) == 1.5  # the section's own time (setup included)
    assert float(suites["Eval-mode outputs"].get("time")) == 0.75  # no section time: its checks'
    assert float(root.get("time")) == 5.0  # the whole run, not only what the suites measured
    assert root.get("tests") == "3" and root.get("failures") == "1"


def test_junit_document_without_a_run_time_sums_its_suites():
    suites = _report("o.ckpt", "n.ckpt").junit_suites()
    assert float(ET.fromstring(junit_document(suites, "x")).get("time")) == 2.25
    assert float(ET.fromstring(junit_document(suites, "x", seconds=9.0)).get("time")) == 9.0
