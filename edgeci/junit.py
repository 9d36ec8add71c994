"""JUnit reports (junit-xml): reports/<stage>-<blueprint>-<arch>.xml, one testcase per check.

classname = edgeci.<stage>.<blueprint>.<arch> (or .<scenario> appended for boot-test suites);
every failure carries a message (junit-xml silently drops a failure without message and output);
output goes to system-out; secrets are masked. Reports never decide the exit code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from edgeci.record import atomic_write_text


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"  # only for "not applicable", always with a reason

    @staticmethod
    def worst(outcomes: list[Outcome]) -> Outcome:
        order = [Outcome.PASSED, Outcome.SKIPPED, Outcome.FAILED, Outcome.ERROR]
        return max(outcomes, key=order.index, default=Outcome.PASSED)


@dataclass
class Case:
    """One check's result."""

    name: str
    outcome: Outcome = Outcome.PASSED
    message: str = ""
    output: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.PASSED, Outcome.SKIPPED)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "outcome": self.outcome.value, "message": self.message,
                "output": self.output, "seconds": round(self.seconds, 3)}


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)


def report_path(reports_dir: str | os.PathLike[str], stage: str, blueprint: str, arch: str) -> Path:
    return Path(reports_dir) / f"{stage}-{blueprint}-{arch}.xml"


def write_junit(
    reports_dir: str | os.PathLike[str],
    stage: str,
    blueprint: str,
    arch: str,
    suites: list[Suite] | list[Case],
) -> Path:
    """Write the report for one stage run; returns its path. Cases alone form one suite."""
    from junit_xml import TestCase, TestSuite, to_xml_report_string

    from edgeci.tools.run import mask

    cases = [s for s in suites if isinstance(s, Case)]
    suite_list = [Suite(stage, cases)] if cases else [s for s in suites if isinstance(s, Suite)]
    base = f"edgeci.{stage}.{blueprint}.{arch}"
    xml_suites = []
    for suite in suite_list:
        classname = base if suite.name == stage else f"{base}.{suite.name}"
        xml_cases = []
        for c in suite.cases:
            tc = TestCase(c.name, classname=classname, elapsed_sec=c.seconds,
                          stdout=mask(c.output) or None)
            msg = mask(c.message) or c.outcome.value
            if c.outcome is Outcome.FAILED:
                tc.add_failure_info(message=msg, output=mask(c.output) or msg)
            elif c.outcome is Outcome.ERROR:
                tc.add_error_info(message=msg, output=mask(c.output) or msg)
            elif c.outcome is Outcome.SKIPPED:
                tc.add_skipped_info(message=msg)
            xml_cases.append(tc)
        xml_suites.append(TestSuite(f"{stage}.{suite.name}" if suite.name != stage else stage, xml_cases))
    path = report_path(reports_dir, stage, blueprint, arch)
    atomic_write_text(path, to_xml_report_string(xml_suites, prettyprint=False, encoding="utf-8"))
    return path
