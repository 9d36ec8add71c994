"""GitLab: the generated child pipeline, the monthly schedule, the protected environment, the MR note.

`child_pipeline()` turns the blueprints a pipeline must build into one job per blueprint × arch and
stage; the `ensure_*` functions read the server's state first and write only what differs, so a
second run changes nothing. python-gitlab is imported lazily; the token (EDGECI_GITLAB_TOKEN) is
registered for masking and never appears in messages.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edgeci.ci import Change
from edgeci.config import Config
from edgeci.errors import ConfigError
from edgeci.gitlab_api import Connection, GitLabError, api_errors, import_gitlab
from edgeci.tools.run import mask

MR_NOTE_MARKER = "<!-- edgeci:mr-summary -->"
ZERO_SHA = "0" * 40
BUILD_STAGES = ("compose", "push", "stage", "boot-test")
CHILD_STAGES = (*BUILD_STAGES, "promote")
# Environments that scope the signing keys: GitLab gives an environment-scoped (File, protected) CI/CD
# variable only to jobs deploying to a matching environment, so EDGECI_COMPOSE_KEY reaches the compose jobs
# and EDGECI_BOOT_TEST_KEY the boot-test jobs, EDGECI_IMAGE_SIGNING_KEY the push jobs of image-mode blueprints,
# nothing else. `action: prepare` records no deployment.
KEY_ENVIRONMENTS = {"compose": "edgeci/compose", "boot-test": "edgeci/boot-test", "push": "edgeci/image-signing"}
# Retried only when the failure is the infrastructure's, never a failed candidate.
RETRY_WHEN = ("runner_system_failure", "stuck_or_timeout_failure", "api_failure")


def retry() -> dict[str, Any]:
    return {"max": 2, "when": list(RETRY_WHEN)}


def pip_cache() -> dict[str, Any]:
    return {"key": "edgeci-pip", "paths": [".cache/pip"], "when": "always"}


FORWARD_VARIABLE = "EDGECI_FORWARD_VARIABLES"  # names of pipeline variables the child pipeline must see
SECRET_NAME = ("TOKEN", "PASSWORD", "SECRET", "KEY", "PRIVATE", "CREDENTIAL")
# the promote job adds the policy a variable names (never instead of the host's /etc/edgeci/trust.yaml)
POLICY_ARG = '${EDGECI_TRUST_POLICY:+--policy "$EDGECI_TRUST_POLICY"}'
# access levels GitLab accepts for deploy_access_levels / approval_rules
ACCESS_LEVELS = {"developer": 30, "maintainer": 40, "admin": 60}


# ---------------------------------------------------------------------------------------------
# The child pipeline


@dataclass(frozen=True, order=True)
class Target:
    blueprint: str
    arch: str
    # an image-mode blueprint (blueprints/NAME/Containerfile): its push job signs the image
    image: bool = field(default=False, compare=False)

    @property
    def slug(self) -> str:
        return f"{self.blueprint}:{self.arch}"

    @property
    def work_dir(self) -> str:
        return f"build/{self.blueprint}/{self.arch}/"

    def report(self, stage: str) -> str:
        return f"reports/{stage}-{self.blueprint}-{self.arch}.xml"

    def job(self, stage: str) -> str:
        return f"{stage}:{self.slug}"


class Mode(StrEnum):
    """What kind of pipeline is planning: it decides how far the child pipeline goes."""

    MERGE_REQUEST = "merge_request"  # lint … boot-test, then the summary note on the MR
    BRANCH = "branch"  # a push to another branch: lint … boot-test
    DEFAULT_BRANCH = "default_branch"  # after merge: … boot-test, then the manual, gated promote
    SCHEDULE = "schedule"  # monthly: every blueprint rebuilt, then the manual, gated promote

    @property
    def promotes(self) -> bool:
        return self in (Mode.DEFAULT_BRANCH, Mode.SCHEDULE)

    @property
    def review(self) -> bool:
        """Candidates that are not releases: their own image repository, tags and stage."""
        return self in (Mode.MERGE_REQUEST, Mode.BRANCH)


def detect_mode(env: Mapping[str, str]) -> Mode:
    """The pipeline kind from GitLab's predefined variables."""
    source = env.get("CI_PIPELINE_SOURCE", "")
    if source == "schedule":
        return Mode.SCHEDULE
    if source in ("merge_request_event", "external_pull_request_event") or env.get("CI_MERGE_REQUEST_IID"):
        return Mode.MERGE_REQUEST
    branch, default = env.get("CI_COMMIT_BRANCH", ""), env.get("CI_DEFAULT_BRANCH", "")
    if branch and branch == default:
        return Mode.DEFAULT_BRANCH
    return Mode.BRANCH


def split_tags(value: str) -> list[str]:
    return [t.strip() for t in value.replace("\n", ",").split(",") if t.strip()]


def forwarded(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The pipeline variables named in EDGECI_FORWARD_VARIABLES (set by `edgeci gitlab schedule`) with their
    values, for the child pipeline's `variables:`; and the names refused because they look like secrets
    (those stay project CI/CD variables: a child pipeline's YAML is an artifact)."""
    out: dict[str, str] = {}
    refused: list[str] = []
    for name in env.get(FORWARD_VARIABLE, "").replace(",", " ").split():
        if any(word in name.upper() for word in SECRET_NAME):
            refused.append(name)
        elif name in env:
            out[name] = env[name]
    return out, refused


def review_image(image: str) -> str:
    """The image repository of review candidates (merge requests, other branches): beside the release one, so
    release tags (the version, latest) are only ever pushed by the default branch."""
    return image.rstrip("/") + "-review"


@dataclass
class ChildOptions:
    """Everything the generated jobs need that is not in edgeci.yaml."""

    mode: Mode = Mode.BRANCH
    image: str = ""  # empty: the runner's default (shell runners ignore it)
    build_tags: list[str] = field(default_factory=list)
    promote_tags: list[str] = field(default_factory=lambda: ["ostree-prod"])
    install: str = ""  # pip requirement installed when `edgeci` is not on PATH, e.g. edgeci[gitlab]
    expire_in: str = "1 week"
    environment: str = "production"
    environment_url: str = ""
    resource_group: str = "production"
    parent_pipeline_id: str = ""  # the parent pipeline, for needs:pipeline (the lint job's records)
    lint_job: str = "edgeci-lint"
    mr_iid: str = ""
    stage_action: str = "serve"  # `edgeci stage serve|wait`
    parent_urls: dict[Target, str] = field(default_factory=dict)  # compose --url: production, when it exists
    commit_sha: str = ""  # short sha of the candidate's commit (review tags)
    ref_slug: str = ""  # CI_COMMIT_REF_SLUG (review tags of other branches)
    registry_image: str = "oci:build/oci/{blueprint}"  # registry.image: review candidates go beside it
    stage_dir: str = "build/stage/{blueprint}"  # stage.dir: review candidates get their own
    review_stop_in: str = "1 week"  # a merge request's stage stops on close, or after this long
    forward: dict[str, str] = field(default_factory=dict)  # pipeline variables the child jobs must see

    @classmethod
    def from_env(cls, cfg: Config, env: Mapping[str, str]) -> ChildOptions:
        """Defaults from the variables the template sets (EDGECI_*) and GitLab's predefined ones."""
        return cls(
            mode=detect_mode(env),
            image=env.get("EDGECI_IMAGE", ""),
            build_tags=split_tags(env.get("EDGECI_BUILD_TAGS", "")),
            promote_tags=split_tags(env.get("EDGECI_PROMOTE_TAGS", "ostree-prod")),
            install=env.get("EDGECI_INSTALL", ""),
            expire_in=env.get("EDGECI_ARTIFACTS_EXPIRE_IN", "") or "1 week",
            environment=env.get("EDGECI_ENVIRONMENT", "") or cfg.gate.gitlab.environment or "production",
            environment_url=cfg.prod.url,
            resource_group=env.get("EDGECI_RESOURCE_GROUP", "") or "production",
            parent_pipeline_id=env.get("CI_PIPELINE_ID", ""),
            mr_iid=env.get("CI_MERGE_REQUEST_IID", ""),
            stage_action="wait" if cfg.stage.mode == "wait" else "serve",
            commit_sha=env.get("CI_COMMIT_SHORT_SHA", "") or env.get("CI_COMMIT_SHA", "")[:8],
            ref_slug=env.get("CI_COMMIT_REF_SLUG", ""),
            registry_image=cfg.registry.image,
            stage_dir=cfg.stage.dir,
            forward=forwarded(env)[0],
        )

    @property
    def review_name(self) -> str:
        """mr-<iid> or branch-<slug>: what a review candidate's tag, stage and environment are named after."""
        if self.mode is Mode.MERGE_REQUEST:
            return f"mr-{self.mr_iid or 'local'}"
        return f"branch-{self.ref_slug or 'local'}"

    @property
    def review_tag(self) -> str:
        return f"{self.review_name}-{self.commit_sha or 'local'}"


def targets_for(cfg: Config, blueprints: list[str]) -> list[Target]:
    """One target per blueprint × configured arch, sorted."""
    return sorted(Target(bp, arch, image=(cfg.blueprints_dir / bp / "Containerfile").is_file())
                  for bp in blueprints for arch in cfg.arches(bp))


def _artifacts(opts: ChildOptions, t: Target, stage: str, *reports: str) -> dict[str, Any]:
    files = [t.report(s) for s in (reports or (stage,))]
    return {
        "name": f"{stage}-{t.blueprint}-{t.arch}",
        "when": "always",
        "expire_in": opts.expire_in,
        # gitlab-ci-local does not export reports:junit, and people want the XML: list it under paths too
        "paths": [t.work_dir, *files],
        "reports": {"junit": files if len(files) > 1 else files[0]},
    }


def _job_base(opts: ChildOptions, t: Target, tags: list[str], stage: str) -> dict[str, Any]:
    job: dict[str, Any] = {"stage": stage}
    if opts.image:
        job["image"] = opts.image
    if tags:
        job["tags"] = list(tags)
    job["variables"] = {"EDGECI_BLUEPRINT": t.blueprint, "EDGECI_ARCH": t.arch}
    job["retry"] = retry()
    if opts.install:
        job["before_script"] = [_install_line(opts.install)]
        job["variables"]["PIP_CACHE_DIR"] = "$CI_PROJECT_DIR/.cache/pip"
        job["cache"] = pip_cache()
    return job


def _install_line(install: str) -> str:
    import shlex

    args = shlex.join(shlex.split(install))  # pip arguments, e.g. "edgeci[gitlab]" or "-e .[gitlab]"
    return f'command -v edgeci >/dev/null 2>&1 || "${{EDGECI_PYTHON:-python3}}" -m pip install {args}'


_ON = '"$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH"'


def _review_variables(opts: ChildOptions) -> dict[str, str]:
    """What makes a merge request's (or another branch's) candidates its own: pushed beside the release
    image with only its own tag among the extra tags, staged by edgeci on the runner in its own directory."""
    return {
        "EDGECI_REGISTRY_IMAGE": review_image(opts.registry_image),
        "EDGECI_REGISTRY_TAGS": opts.review_tag,
        "EDGECI_REGISTRY_RELEASE_TAGS": "false",  # only the default branch pushes <version> and latest
        "EDGECI_STAGE_MODE": "serve",
        "EDGECI_STAGE_URL": "",
        "EDGECI_STAGE_PORT": "0",
        "EDGECI_STAGE_DIR": f"{opts.stage_dir.rstrip('/')}-{opts.review_name}",
    }


def child_pipeline(targets: list[Target], opts: ChildOptions) -> dict[str, Any]:
    """The child pipeline as a YAML-ready mapping (see render_yaml)."""
    stages = list(CHILD_STAGES if opts.mode.promotes else BUILD_STAGES)
    doc: dict[str, Any] = {"stages": stages}
    variables: dict[str, str] = {"EDGECI_PIPELINE_MODE": opts.mode.value}
    if opts.parent_pipeline_id:
        variables["PARENT_PIPELINE_ID"] = str(opts.parent_pipeline_id)
    for key, value in sorted(opts.forward.items()):
        variables.setdefault(key, value)
    stage_action = opts.stage_action
    if opts.mode.review:
        variables.update(_review_variables(opts))
        stage_action = "serve"  # the shared stage host serves releases only
    doc["variables"] = variables
    if not targets:
        # a child pipeline needs one job; this one needs no edgeci
        nothing: dict[str, Any] = {"stage": "compose"}
        if opts.image:
            nothing["image"] = opts.image
        if opts.build_tags:
            nothing["tags"] = list(opts.build_tags)
        nothing["script"] = ["echo 'edgeci: no blueprint changed in this range: nothing to build'"]
        doc["nothing-to-build"] = nothing
        return doc

    for t in targets:
        compose = _job_base(opts, t, opts.build_tags, "compose")
        compose["interruptible"] = True
        # EDGECI_COMPOSE_KEY is scoped to this environment: only the compose jobs sign provenance
        compose["environment"] = {"name": KEY_ENVIRONMENTS["compose"], "action": "prepare"}
        if opts.parent_pipeline_id:
            # the lint job's records (blueprint + lint sections) come from the parent pipeline
            compose["needs"] = [{"pipeline": "$PARENT_PIPELINE_ID", "job": opts.lint_job}]
        else:
            compose["needs"] = []
        url = opts.parent_urls.get(t, "")
        # monthly: an unchanged blueprint is composed as production's next patch version
        rebuild = " --rebuild" if opts.mode is Mode.SCHEDULE else ""
        if url:
            compose["variables"]["EDGECI_PARENT_URL"] = url  # build on top of production
            compose["script"] = [f'edgeci compose {_ON} --url "$EDGECI_PARENT_URL"{rebuild}']
        else:
            compose["script"] = [f"edgeci compose {_ON}{rebuild}"]
        compose["artifacts"] = _artifacts(opts, t, "compose")
        doc[t.job("compose")] = compose

        previous = "compose"
        for stage, command in (("push", f"edgeci push {_ON}"),
                               ("stage", f"edgeci stage {stage_action} {_ON}"),
                               ("boot-test", f"edgeci boot-test {_ON}")):
            job = _job_base(opts, t, opts.build_tags, stage)
            job["interruptible"] = True
            job["needs"] = [{"job": t.job(previous), "artifacts": True}]
            job["script"] = [command]
            job["artifacts"] = _artifacts(opts, t, stage)
            if stage == "boot-test":
                # EDGECI_BOOT_TEST_KEY is scoped to this environment: only the boot-test jobs sign results
                job["environment"] = {"name": KEY_ENVIRONMENTS["boot-test"], "action": "prepare"}
            if stage == "push" and t.image:
                # EDGECI_IMAGE_SIGNING_KEY is scoped to this environment: only image pushes sign images
                job["environment"] = {"name": KEY_ENVIRONMENTS["push"], "action": "prepare"}
            if stage == "stage" and opts.mode is Mode.MERGE_REQUEST:
                # the merge request's own stage, stopped when the merge request is merged or closed
                job["environment"] = {"name": f"review/{opts.review_name}/{t.blueprint}-{t.arch}",
                                      "action": "start", "on_stop": t.job("stage-stop"),
                                      "auto_stop_in": opts.review_stop_in}
            doc[t.job(stage)] = job
            previous = stage

        if opts.mode.promotes:
            promote = _job_base(opts, t, opts.promote_tags, "promote")
            promote["needs"] = [{"job": t.job("boot-test"), "artifacts": True}]
            env: dict[str, str] = {"name": opts.environment, "deployment_tier": "production"}
            if opts.environment_url:
                env["url"] = opts.environment_url
            promote["environment"] = env
            promote["resource_group"] = opts.resource_group
            # Manual and never `rules: changes` (always true on schedules), never automatic. Not blocking: the
            # pipeline ends green with the candidate waiting for approval, and whoever may deploy to the
            # protected environment plays the job later (its own run, in this pipeline).
            promote["rules"] = [{"when": "manual", "allow_failure": True}]
            promote["allow_failure"] = True
            promote["interruptible"] = False
            promote["script"] = [f"edgeci gate {_ON}", f"edgeci promote {_ON} {POLICY_ARG}"]
            if stage_action == "serve":
                # edgeci's stage server is needed until promotion pulled from it: stop it only after a
                # successful promotion, so a promote refused at the gate can be retried once approved.
                promote["script"].append(f"edgeci stage stop {_ON}")
            promote["artifacts"] = _artifacts(opts, t, "promote", "gate", "promote")
            doc[t.job("promote")] = promote

        if stage_action == "serve" and opts.mode is Mode.BRANCH:
            # The branch's stage server is not needed once the boot test is over.
            stop = _job_base(opts, t, opts.build_tags, ".post")
            stop["when"] = "always"
            stop["dependencies"] = []  # it stops the server by the PID file in stage.dir, no record needed
            stop["script"] = [f"edgeci stage stop {_ON}"]
            doc[t.job("stage-stop")] = stop
        elif opts.mode is Mode.MERGE_REQUEST:
            # The environment's on_stop job: GitLab runs it when the merge request is merged or closed (or
            # the environment auto-stops); people can run it by hand. It never blocks the pipeline.
            stop = _job_base(opts, t, opts.build_tags, "stage")
            stop["environment"] = {"name": f"review/{opts.review_name}/{t.blueprint}-{t.arch}", "action": "stop"}
            stop["rules"] = [{"when": "manual", "allow_failure": True}]
            stop["allow_failure"] = True
            stop["dependencies"] = []
            stop["script"] = [f"edgeci stage stop {_ON}"]
            doc[t.job("stage-stop")] = stop

    if opts.mode is Mode.MERGE_REQUEST:
        note: dict[str, Any] = {"stage": ".post"}
        if opts.image:
            note["image"] = opts.image
        if opts.build_tags:
            note["tags"] = list(opts.build_tags)
        note["when"] = "always"
        # a token or API problem is a warning on the pipeline, never a failed candidate
        note["allow_failure"] = True
        note["retry"] = retry()
        note["needs"] = [{"job": t.job("boot-test"), "artifacts": True} for t in targets]
        note["variables"] = {
            "EDGECI_MR_IID": str(opts.mr_iid),
            "EDGECI_TARGETS": " ".join(f"{t.blueprint}/{t.arch}" for t in targets),
        }
        if opts.install:
            note["before_script"] = [_install_line(opts.install)]
        note["script"] = ['edgeci gitlab mr-note --iid "$EDGECI_MR_IID" --output reports/mr-summary.md']
        note["artifacts"] = {"when": "always", "expire_in": opts.expire_in, "paths": ["reports/mr-summary.md"]}
        doc["mr-note"] = note
    return doc


def render_yaml(doc: Mapping[str, Any], header: str = "") -> str:
    import yaml

    text = yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=1000)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + text


# ---------------------------------------------------------------------------------------------
# Pipeline schedule


@dataclass
class ScheduleSpec:
    cron: str
    ref: str = "main"
    description: str = "edgeci: monthly rebuild of every blueprint"
    timezone: str = "UTC"
    active: bool = True
    variables: dict[str, str] = field(default_factory=dict)
    prune_variables: bool = False


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def validate_cron(cron: str) -> None:
    fields = cron.split()
    if len(fields) != 5:
        raise ConfigError(f"cron expression '{cron}' has {len(fields)} fields, GitLab wants 5",
                          where="--cron", fix="e.g. '0 3 1 * *' (03:00 on the 1st of every month)")


def ensure_schedule(conn: Connection, project: Any, spec: ScheduleSpec) -> list[Change]:
    """Create or update the schedule named spec.description and its variables; writes only differences."""
    validate_cron(spec.cron)
    what = f"schedule '{spec.description}'"
    with api_errors(conn, "pipeline schedules"):
        found = [s for s in project.pipelineschedules.list(get_all=True) if s.description == spec.description]
    if len(found) > 1:
        ids = ", ".join(f"#{s.id}" for s in found)
        raise GitLabError(f"{len(found)} pipeline schedules are named '{spec.description}' ({ids})",
                          where=conn.url, fix="delete the duplicates (Build > Pipeline schedules) and run again")
    changes: list[Change] = []
    if not found:
        with api_errors(conn, what):
            sched = project.pipelineschedules.create({
                "description": spec.description, "ref": spec.ref, "cron": spec.cron,
                "cron_timezone": spec.timezone, "active": spec.active,
            })
            changes.append(Change(what, "created", f"#{sched.id}, '{spec.cron}' {spec.timezone} on {spec.ref}"))
            for key, value in spec.variables.items():
                sched.variables.create({"key": key, "value": value, "variable_type": "env_var"})
                changes.append(Change(f"  variable {key}", "created"))
        return changes

    with api_errors(conn, what):
        sched = project.pipelineschedules.get(found[0].id)  # the single GET carries the variables
    attrs = sched.attributes
    diff: dict[str, Any] = {}
    if _short_ref(str(attrs.get("ref", ""))) != _short_ref(spec.ref):
        diff["ref"] = spec.ref
    if attrs.get("cron") != spec.cron:
        diff["cron"] = spec.cron
    if (attrs.get("cron_timezone") or "UTC") != spec.timezone:
        diff["cron_timezone"] = spec.timezone
    if bool(attrs.get("active", True)) != spec.active:
        diff["active"] = spec.active
    if diff:
        with api_errors(conn, what):
            for key, value in diff.items():
                setattr(sched, key, value)
            sched.save()  # PUT with the changed attributes only
        changes.append(Change(what, "updated", ", ".join(sorted(diff))))
    else:
        changes.append(Change(what, "unchanged", f"#{sched.id}"))

    current = {v["key"]: v for v in attrs.get("variables") or []}
    with api_errors(conn, f"variables of {what}"):
        for key, value in spec.variables.items():
            cur = current.get(key)
            if cur is None:
                sched.variables.create({"key": key, "value": value, "variable_type": "env_var"})
                changes.append(Change(f"  variable {key}", "created"))
            elif cur.get("value") != value or cur.get("variable_type", "env_var") != "env_var":
                sched.variables.update(key, {"key": key, "value": value, "variable_type": "env_var"})
                changes.append(Change(f"  variable {key}", "updated"))
            else:
                changes.append(Change(f"  variable {key}", "unchanged"))
        for key in sorted(set(current) - set(spec.variables)):
            if spec.prune_variables:
                sched.variables.delete(key)
                changes.append(Change(f"  variable {key}", "deleted"))
            else:
                changes.append(Change(f"  variable {key}", "unchanged", "not managed by edgeci; --prune-variables"
                                                                        " deletes it"))
    return changes


# ---------------------------------------------------------------------------------------------
# Protected environment


@dataclass(frozen=True, order=True)
class Rule:
    """Who: one of user_id, group_id, access_level (GitLab's three kinds of rule)."""

    kind: str
    value: int

    def as_api(self) -> dict[str, int]:
        return {self.kind: self.value}

    def describe(self) -> str:
        if self.kind == "access_level":
            names = {v: k for k, v in ACCESS_LEVELS.items()}
            return f"{names.get(self.value, self.value)}s"
        return f"{self.kind.removesuffix('_id')} #{self.value}"


def _rule_of(entry: Mapping[str, Any]) -> Rule:
    # A group or user rule also carries an access_level in GitLab's answers: the id decides.
    if entry.get("user_id"):
        return Rule("user_id", int(entry["user_id"]))
    if entry.get("group_id"):
        return Rule("group_id", int(entry["group_id"]))
    return Rule("access_level", int(entry.get("access_level") or 0))


@dataclass
class EnvironmentSpec:
    name: str = "production"
    deploy: list[Rule] = field(default_factory=lambda: [Rule("access_level", ACCESS_LEVELS["maintainer"])])
    approvals: dict[Rule, int] = field(default_factory=dict)  # rule → required approvals


def resolve_group(conn: Connection, group: str) -> int:
    if group.isdigit():
        return int(group)
    with api_errors(conn, f"group '{group}'"):
        return int(conn.gl.groups.get(group).id)


def resolve_user(conn: Connection, user: str) -> int:
    if user.isdigit():
        return int(user)
    with api_errors(conn, f"user '{user}'"):
        found = conn.gl.users.list(username=user, get_all=False)
    if not found:
        raise GitLabError(f"user '{user}' not found", where=conn.url, fix="check the username (without @)")
    return int(found[0].id)


def _get_or_none(conn: Connection, what: str, get: Any) -> Any:
    """get(), or None when GitLab answers 404; other errors as GitLabError."""
    gitlab = import_gitlab()
    with api_errors(conn, what):
        try:
            return get()
        except gitlab.exceptions.GitlabGetError as e:
            if e.response_code == 404:
                return None
            raise


def ensure_protected_environment(conn: Connection, project: Any, spec: EnvironmentSpec) -> list[Change]:
    """POST the protected environment if missing, else PUT only the rules that differ."""
    what = f"protected environment '{spec.name}'"
    current = _get_or_none(conn, what, lambda: project.protected_environments.get(spec.name))
    approval_rules = [{**r.as_api(), "required_approvals": n} for r, n in sorted(spec.approvals.items())]
    if current is None:
        with api_errors(conn, what):
            project.protected_environments.create({
                "name": spec.name,
                "deploy_access_levels": [r.as_api() for r in sorted(spec.deploy)],
                "approval_rules": approval_rules,
            })
        who = ", ".join(r.describe() for r in sorted(spec.deploy))
        approvals = "; ".join(f"{n} from {r.describe()}" for r, n in sorted(spec.approvals.items()))
        return [Change(what, "created", f"deploy: {who}" + (f"; approvals: {approvals}" if approvals else ""))]

    attrs = current.attributes
    deploy_now = {_rule_of(e): e for e in attrs.get("deploy_access_levels") or []}
    rules_now = {_rule_of(e): e for e in attrs.get("approval_rules") or []}
    deploy_changes: list[dict[str, Any]] = []
    rule_changes: list[dict[str, Any]] = []
    notes: list[str] = []
    for r in sorted(set(spec.deploy) - set(deploy_now)):
        deploy_changes.append(r.as_api())
        notes.append(f"+deploy {r.describe()}")
    for r in sorted(set(deploy_now) - set(spec.deploy)):
        deploy_changes.append({"id": deploy_now[r]["id"], "_destroy": True})
        notes.append(f"-deploy {r.describe()}")
    for r, n in sorted(spec.approvals.items()):
        if r not in rules_now:
            rule_changes.append({**r.as_api(), "required_approvals": n})
            notes.append(f"+{n} approvals from {r.describe()}")
        elif int(rules_now[r].get("required_approvals") or 0) != n:
            rule_changes.append({"id": rules_now[r]["id"], "required_approvals": n})
            notes.append(f"{r.describe()} needs {n} approvals")
    for r in sorted(set(rules_now) - set(spec.approvals)):
        rule_changes.append({"id": rules_now[r]["id"], "_destroy": True})
        notes.append(f"-approvals from {r.describe()}")
    if not deploy_changes and not rule_changes:
        return [Change(what, "unchanged")]
    payload: dict[str, Any] = {}
    if deploy_changes:
        payload["deploy_access_levels"] = deploy_changes
    if rule_changes:
        payload["approval_rules"] = rule_changes
    path = f"/projects/{quote(str(project.id), safe='')}/protected_environments/{quote(spec.name, safe='')}"
    with api_errors(conn, what):
        conn.gl.http_put(path, post_data=payload)  # python-gitlab has no update() for this endpoint
    return [Change(what, "updated", ", ".join(notes))]


PROCESS_MODES = ("unordered", "oldest_first", "newest_first", "newest_ready_first")


def ensure_resource_group(conn: Connection, project: Any, key: str, process_mode: str = "oldest_first") -> Change:
    """Set the resource group's process mode (GET, then PUT only when it differs). GitLab creates a resource
    group when a job first uses it: until then there is nothing to set, which is said, not an error."""
    if process_mode not in PROCESS_MODES:
        raise ConfigError(f"process mode '{process_mode}' is not one of {', '.join(PROCESS_MODES)}",
                          where="--process-mode")
    what = f"resource group '{key}'"
    group = _get_or_none(conn, what, lambda: project.resource_groups.get(key))
    if group is None:
        return Change(what, "unchanged", "GitLab creates it when a promote job first runs: run this command "
                                         "again after that to set its process mode")
    current = str(group.attributes.get("process_mode") or "unordered")
    if current == process_mode:
        return Change(what, "unchanged", f"process mode {current}")
    with api_errors(conn, what):
        group.process_mode = process_mode
        group.save()  # PUT /projects/:id/resource_groups/:key process_mode=…
    return Change(what, "updated", f"process mode {current} -> {process_mode}")


# ---------------------------------------------------------------------------------------------
# Merge-request summary note


def _junit_counts(path: Path) -> tuple[int, int, int] | None:
    """(tests, failed incl. errors, skipped) of a JUnit file, or None if there is none / it is unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = root.iter("testcase")
    tests = failed = skipped = 0
    for case in cases:
        tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
    return tests, failed, skipped


# record section → the JUnit report names its stage may write
_SUMMARY_STAGES = (("lint", ("lint",)), ("compose", ("compose",)), ("push", ("push",)), ("stage", ("stage",)),
                   ("boot_test", ("boot-test", "boot_test")))


def discover_targets(cfg: Config) -> list[Target]:
    """Every blueprint × arch that has a record under the build directory."""
    root = cfg.build_dir
    return sorted(Target(p.parent.parent.name, p.parent.name) for p in root.glob("*/*/record.json"))


def mr_summary(cfg: Config, targets: list[Target], env: Mapping[str, str] | None = None) -> str:
    """The markdown body of the MR note: one row per blueprint × arch, boot-test detail, pipeline link."""
    import json

    env = os.environ if env is None else env
    rows: list[str] = []
    details: list[str] = []
    for t in targets:
        path = cfg.build_dir / t.blueprint / t.arch / "record.json"
        try:
            sections = json.loads(path.read_text(encoding="utf-8")).get("sections", {})
        except (OSError, ValueError):
            sections = {}
        bp = sections.get("blueprint", {})
        commit = str(sections.get("compose", {}).get("commit", ""))[:12]
        cells = []
        for section, report_names in _SUMMARY_STAGES:
            sec = sections.get(section)
            counts = None
            for name in report_names:
                counts = _junit_counts(cfg.reports_dir / f"{name}-{t.blueprint}-{t.arch}.xml")
                if counts:
                    break
            if sec is None:
                cells.append("— not run")
                continue
            status = sec.get("status", "?")
            cell = "✅ passed" if status == "passed" else f"❌ {status}"
            if counts and counts[0]:
                tests, failed, _ = counts
                cell += f" ({tests - failed}/{tests})" if failed else f" ({tests})"
            cells.append(cell)
        version = bp.get("version", "?")
        rows.append(f"| {t.blueprint} | {t.arch} | {version} | `{commit or '—'}` | " + " | ".join(cells) + " |")
        bt = sections.get("boot_test")
        if bt:
            parts, failing = [], []
            for scenario, result in (bt.get("scenarios") or {}).items():
                outcome = result.get("outcome", "?")
                mark = {"passed": "✅", "failed": "❌", "error": "❌", "skipped": "➖"}.get(outcome, "•")
                reason = f" ({result['reason']})" if result.get("reason") and outcome != "passed" else ""
                parts.append(f"{scenario} {mark}{reason}")
                for check in result.get("checks") or []:
                    if check.get("outcome") not in ("passed", "skipped"):
                        failing.append(f"- {scenario}: check `{check.get('name')}` {check.get('outcome')}")
            delta = ""
            if bt.get("delta_bytes") is not None and bt.get("full_bytes"):
                from edgeci.fmt import human_bytes

                delta_h = human_bytes(bt["delta_bytes"], units="short")
                full_h = human_bytes(bt["full_bytes"], units="short")
                delta = f" · update delta {delta_h} of {full_h}"
            details.append(f"**{t.blueprint}/{t.arch}** boot test ({bt.get('backend', '?')}): "
                           + (", ".join(parts) or "no scenarios") + delta)
            details.extend(failing)

    head = [
        MR_NOTE_MARKER,
        "### edgeci: candidates built from this merge request",
        "",
        "| Blueprint | Arch | Version | Commit | Lint | Compose | Push | Stage | Boot test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if not rows:
        rows = ["| — | — | — | — | no blueprint changed | | | | |"]
    foot = [""]
    pipeline_url = env.get("CI_PIPELINE_URL", "")
    sha = env.get("CI_COMMIT_SHORT_SHA", "") or env.get("CI_COMMIT_SHA", "")[:8]
    if pipeline_url or sha:
        foot.append(f"Pipeline {pipeline_url or '(local)'}" + (f" at `{sha}`" if sha else "")
                    + ". Production is promoted after merge, through the gated `promote` job.")
    foot.append("<sub>edgeci updates this note on every pipeline of the merge request.</sub>")
    body = "\n".join([*head, *rows, "", *details, *foot]).strip() + "\n"
    return mask(body)


def upsert_mr_note(conn: Connection, project: Any, iid: int, body: str) -> Change:
    """Post the summary note, or update the one carrying MR_NOTE_MARKER; no write when it is unchanged."""
    if MR_NOTE_MARKER not in body:
        raise ValueError("the note body must carry MR_NOTE_MARKER")
    what = f"summary note on merge request !{iid}"
    with api_errors(conn, "the token's user"):
        conn.gl.auth()  # GET /user: only a note this user wrote is ours (others may quote the marker)
        me = int(conn.gl.user.id)
    with api_errors(conn, f"merge request !{iid}"):
        mr = project.mergerequests.get(iid, lazy=True)
        notes = mr.notes.list(get_all=True, sort="asc", order_by="created_at")
    ours = [n for n in notes if MR_NOTE_MARKER in (n.body or "") and not getattr(n, "system", False)
            and int((getattr(n, "author", None) or {}).get("id", -1)) == me]
    with api_errors(conn, what):
        if not ours:
            note = mr.notes.create({"body": body})
            return Change(what, "created", f"note #{note.id}")
        note = ours[0]
        if (note.body or "").strip() == body.strip():
            return Change(what, "unchanged", f"note #{note.id}")
        note.body = body
        note.save()
        return Change(what, "updated", f"note #{note.id}")
