"""Glue for the CI servers edgeci runs under: GitLab (gitlab.py) and Jenkins (jenkins.py).

The pipelines themselves live in pipelines/gitlab and pipelines/jenkins; these modules generate the
GitLab child pipeline and keep the server-side set-up (schedules, protected environments, jobs,
approvals) in the state the pipelines expect, idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Change:
    """One thing a set-up command did on a CI server: created, updated, deleted, unchanged, approved, aborted."""

    what: str
    action: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.action}" + (f" ({self.detail})" if self.detail else "")

    @property
    def wrote(self) -> bool:
        return self.action != "unchanged"
