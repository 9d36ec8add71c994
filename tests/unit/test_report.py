"""JUnit reports parsed back: file name, classname, unique names, failure messages, system-out, masking."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgeci.junit import Case, Outcome, Suite, report_path, write_junit
from edgeci.tools.run import register_secret


def parse(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("testcase"))


def test_cases_become_one_suite_with_stage_classname(tmp_path: Path) -> None:
    cases = [
        Case("syntax"),
        Case("version", Outcome.FAILED, "gw.toml:3: version '1.0' is not semver", "details"),
        Case("compose-started", Outcome.ERROR, "composer unreachable"),
        Case("version-bump", Outcome.SKIPPED, "no base revision given"),
    ]
    path = write_junit(tmp_path, "lint", "gw", "x86_64", cases)
    assert path == tmp_path / "lint-gw-x86_64.xml" == report_path(tmp_path, "lint", "gw", "x86_64")
    tcs = parse(path)
    assert [t.get("classname") for t in tcs] == ["edgeci.lint.gw.x86_64"] * 4
    assert [t.get("name") for t in tcs] == ["syntax", "version", "compose-started", "version-bump"]
    assert tcs[0].find("failure") is None
    failure = tcs[1].find("failure")
    assert failure is not None and failure.get("message") == "gw.toml:3: version '1.0' is not semver"
    assert tcs[1].findtext("system-out") == "details"
    error = tcs[2].find("error")
    assert error is not None and error.get("message") == "composer unreachable"
    skipped = tcs[3].find("skipped")
    assert skipped is not None and skipped.get("message") == "no base revision given"
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("errors") == "1"


def test_failure_without_message_still_carries_one(tmp_path: Path) -> None:
    # junit-xml drops a failure that has neither message nor output: edgeci always gives one.
    path = write_junit(tmp_path, "gate", "gw", "x86_64", [Case("approved", Outcome.FAILED)])
    (tc,) = parse(path)
    failure = tc.find("failure")
    assert failure is not None and failure.get("message") == "failed"


def test_suites_append_their_name_to_the_classname(tmp_path: Path) -> None:
    suites = [Suite("install", [Case("hostname"), Case("sshd")]),
              Suite("upgrade", [Case("hostname", Outcome.FAILED, "wrong host", "hostname=x")])]
    path = write_junit(tmp_path, "boot-test", "gw", "aarch64", suites)
    tcs = parse(path)
    keys = [(t.get("classname"), t.get("name")) for t in tcs]
    assert keys == [("edgeci.boot-test.gw.aarch64.install", "hostname"),
                    ("edgeci.boot-test.gw.aarch64.install", "sshd"),
                    ("edgeci.boot-test.gw.aarch64.upgrade", "hostname")]
    assert len(set(keys)) == len(keys)  # GitLab keys cases by classname + name
    names = [s.get("name") for s in ET.parse(path).getroot().iter("testsuite")]
    assert names == ["boot-test.install", "boot-test.upgrade"]


def test_secrets_are_masked_in_messages_and_output(tmp_path: Path) -> None:
    register_secret("report-secret-0a1b2c")
    case = Case("push", Outcome.FAILED, "login failed for report-secret-0a1b2c",
                "skopeo --creds u:report-secret-0a1b2c")
    path = write_junit(tmp_path, "push", "gw", "x86_64", [case])
    text = path.read_text()
    assert "report-secret-0a1b2c" not in text
    (tc,) = parse(path)
    failure = tc.find("failure")
    assert failure is not None and failure.get("message") == "login failed for ***"
    assert tc.findtext("system-out") == "skopeo --creds u:***"


def test_rewriting_replaces_the_report_atomically(tmp_path: Path) -> None:
    write_junit(tmp_path, "lint", "gw", "x86_64", [Case("a", Outcome.FAILED, "x")])
    path = write_junit(tmp_path, "lint", "gw", "x86_64", [Case("a")])
    (tc,) = parse(path)
    assert tc.find("failure") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lint-gw-x86_64.xml"]


def test_outcome_worst_and_case_ok() -> None:
    assert Outcome.worst([]) is Outcome.PASSED
    assert Outcome.worst([Outcome.PASSED, Outcome.SKIPPED]) is Outcome.SKIPPED
    assert Outcome.worst([Outcome.FAILED, Outcome.ERROR, Outcome.PASSED]) is Outcome.ERROR
    assert Case("x", Outcome.SKIPPED).ok and not Case("x", Outcome.FAILED).ok
    assert Suite("s", [Case("a"), Case("b", Outcome.ERROR)]).ok is False
    assert Case("x", seconds=1.23456).as_dict()["seconds"] == 1.235
