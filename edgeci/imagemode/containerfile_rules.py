"""Lint an image-mode Containerfile: edgeci's own rules, then hadolint's findings when hadolint is installed.

Findings are edgeci.blueprint.Finding (rule, severity, "file:line", message), exactly what the lint stage
reports for TOML blueprints. The rules:

- base-unpinned (error): every FROM of an image (not `scratch`, not an earlier stage) pins it by digest
  (`…@sha256:<64 hex>`) or matches one of the allowed tags (`allowed_tags`, fnmatch patterns such as
  `registry.redhat.io/rhel10/rhel-bootc:10.*`).
- base-unresolved (error): a FROM whose ${ARG} has no default.
- version-label (error): the final stage carries LABEL org.opencontainers.image.version (or `version`), semver.
- bootc-labels: containers.bootc=1 and ostree.bootable=1. Missing: a warning when the build adds them
  (`bootc_labels_at_build`, edgeci.imagemode.build does by default), else an error. Set to another value: error.
- hadolint/DLxxxx, hadolint/SCxxxx: hadolint's findings (error → error, anything else → warning).

`bootc container lint` is the image's own check: it needs the bootc binary inside the image, so it runs at
build (edgeci.imagemode.build runs it in the built image when the image carries /usr/bin/bootc) and
`deferred_checks()` names it for the lint report.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from edgeci.blueprint import Finding
from edgeci.errors import BlueprintError, ConfigError
from edgeci.imagemode.source import BOOTC_LABELS, VERSION_LABELS, Containerfile, load
from edgeci.tools.run import have, run
from edgeci.version import parse_semver

ERROR = "error"
WARNING = "warning"
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
BOOTC_CONTAINER_LINT = "bootc container lint"
HADOLINT_MODES = ("auto", "off", "required")


@dataclass(frozen=True)
class LintSettings:
    """What the project allows (the glue fills it from edgeci.yaml's image-mode section)."""

    allowed_tags: tuple[str, ...] = ()
    bootc_labels_at_build: bool = True
    hadolint: str = "auto"  # auto: when installed · off · required: a missing hadolint is an error (exit 2)
    hadolint_ignore: tuple[str, ...] = ()


def _is_pinned(ref: str) -> bool:
    return bool(DIGEST_RE.search(ref))


def _allowed(ref: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(ref, p) for p in patterns)


def check_bases(cf: Containerfile, settings: LintSettings) -> list[Finding]:
    out: list[Finding] = []
    earlier: set[str] = set()
    for stage in cf.stages:
        where = f"{cf.path}:{stage.line}"
        ref = stage.base
        if "$" in ref:
            out.append(Finding("base-unresolved", ERROR, where,
                               f"FROM {stage.base_raw}: an ARG without a default; the base cannot be checked"))
        elif ref.lower() == "scratch" or ref in earlier:
            pass
        elif not _is_pinned(ref) and not _allowed(ref, settings.allowed_tags):
            allowed = ", ".join(settings.allowed_tags) or "none configured"
            out.append(Finding("base-unpinned", ERROR, where,
                               f"base image '{ref}' is neither pinned by digest (@sha256:…) nor an allowed tag "
                               f"({allowed}); pin it: FROM {ref.split('@')[0]}@sha256:<digest>"))
        if stage.name:
            earlier.add(stage.name)
    return out


def check_version(cf: Containerfile) -> list[Finding]:
    labels = cf.final.labels()
    for key in VERSION_LABELS:
        if key in labels:
            value, line = labels[key]
            if parse_semver(value) is None:
                return [Finding("version-label", ERROR, f"{cf.path}:{line}",
                                f"LABEL {key}={value!r} is not a semantic version (MAJOR.MINOR.PATCH)")]
            return []
    return [Finding("version-label", ERROR, f"{cf.path}:{cf.final.line}",
                    "the image carries no version: add LABEL org.opencontainers.image.version=MAJOR.MINOR.PATCH "
                    "to the final stage")]


def check_bootc_labels(cf: Containerfile, settings: LintSettings) -> list[Finding]:
    labels = cf.final.labels()
    out: list[Finding] = []
    for key, want in BOOTC_LABELS.items():
        if key in labels:
            value, line = labels[key]
            if value != want:
                out.append(Finding("bootc-labels", ERROR, f"{cf.path}:{line}",
                                   f"LABEL {key}={value!r}: bootc expects {key}={want}"))
        elif settings.bootc_labels_at_build:
            out.append(Finding("bootc-labels", WARNING, f"{cf.path}:{cf.final.line}",
                               f"no LABEL {key}={want}: the build adds it (the base image may carry it too)"))
        else:
            out.append(Finding("bootc-labels", ERROR, f"{cf.path}:{cf.final.line}",
                               f"no LABEL {key}={want}: bootc only boots images that carry it"))
    return out


def hadolint_findings(path: str | os.PathLike[str], settings: LintSettings) -> list[Finding]:
    """hadolint's findings for the Containerfile ([] when off, or auto and hadolint is not installed)."""
    if settings.hadolint not in HADOLINT_MODES:
        raise ConfigError(f"hadolint mode {settings.hadolint!r} is not one of {', '.join(HADOLINT_MODES)}",
                          where="image_mode.hadolint")
    if settings.hadolint == "off" or (settings.hadolint == "auto" and not have("hadolint")):
        return []
    argv = ["hadolint", "--format", "json", "--no-fail"]
    for rule in settings.hadolint_ignore:
        argv += ["--ignore", rule]
    r = run([*argv, os.fspath(path)], timeout=120, check=False)
    try:
        items = json.loads(r.stdout or "[]")
    except json.JSONDecodeError:
        raise BlueprintError(f"hadolint printed no JSON (exit {r.returncode}): {r.stderr.strip()[:200]}",
                             where=os.fspath(path)) from None
    out = []
    for it in items if isinstance(items, list) else []:
        level = str(it.get("level", "warning"))
        out.append(Finding(f"hadolint/{it.get('code', '?')}", ERROR if level == "error" else WARNING,
                           f"{os.fspath(path)}:{int(it.get('line') or 1)}", str(it.get("message", "")).strip()))
    return out


def deferred_checks() -> list[tuple[str, str]]:
    """Checks lint names but cannot run itself: (name, where it runs)."""
    return [(BOOTC_CONTAINER_LINT, "at build, inside the built image, when the image carries /usr/bin/bootc "
                                   "(the bootc base images do; edgeci's local test base does not)")]


def lint_containerfile(path: str | os.PathLike[str], settings: LintSettings | None = None) -> list[Finding]:
    """Every finding for the Containerfile at `path`, sorted by line. An unparseable file is one error
    finding (rule containerfile) at its line, like an unparseable TOML blueprint."""
    settings = settings or LintSettings()
    try:
        cf = load(path)
    except BlueprintError as e:
        return [Finding("containerfile", ERROR, e.where or os.fspath(path), e.message)]
    findings = [*check_bases(cf, settings), *check_version(cf), *check_bootc_labels(cf, settings),
                *hadolint_findings(path, settings)]
    return sorted(findings, key=lambda f: (f.lineno, f.rule))
