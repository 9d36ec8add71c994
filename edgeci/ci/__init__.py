"""Glue for the CI servers edgeci runs under: GitLab (gitlab.py) and Jenkins (jenkins.py).

The pipelines themselves live in pipelines/gitlab and pipelines/jenkins; these modules generate the
GitLab child pipeline and keep the server-side set-up (schedules, protected environments, jobs,
approvals) in the state the pipelines expect, idempotently.
"""
