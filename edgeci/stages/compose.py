"""`edgeci compose BLUEPRINT`: lint, compose with the configured backend, download the artifact, record it.

Lints the blueprint first (errors stop here, exit 2: "run edgeci lint"), pushes it to the composer,
starts the compose (edge-container by default), waits with one progress line per state change,
downloads the artifact into build/<bp>/<arch>/ and records the blueprint and compose sections;
reports/compose-<bp>-<arch>.xml has one case, "compose". A FAILED compose attaches its log to the
JUnit failure and exits 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.blueprint import Blueprint
    from edgeci.record import BuildRecord

HELP = "compose the blueprint into an ostree commit (edge-container or edge-commit) and record it"
TYPES = ("edge-container", "edge-commit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--type", choices=TYPES, default=None,
                   help="image type (default: blueprints.NAME.image_type or project.image_type)")
    p.add_argument("--ref", default=None, help="ostree ref (default: rhel/9/<arch>/edge[/<blueprint>])")
    p.add_argument("--parent", default=None, metavar="CHECKSUM", help="parent commit of the new commit")
    p.add_argument("--url", default=None,
                   help="repo URL to take the parent from (its ref tip when --parent is not given)")
    p.add_argument("--backend", choices=("local", "weldr", "cloud"), default=None,
                   help="composer backend (default: composer.backend)")
    p.add_argument("--socket", default=None, metavar="PATH", help="weldr API socket (default: composer.socket)")
    p.add_argument("--allow-uncommitted", action="store_true",
                   help="local experiments only (gate.source local): compose a blueprint or checks file with "
                        "uncommitted changes; recorded, and the gate denies the candidate")
    p.add_argument("--rebuild", action="store_true",
                   help="scheduled rebuild: when the blueprint's version is not above production's, compose it as "
                        "production's next patch version (1.2.3 -> 1.2.4) so package updates ship; git is unchanged")


def _display(cfg: Config, path: Path) -> str:
    try:
        return path.resolve().relative_to(cfg.root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _lint(path: Path, cfg: Config) -> None:
    """The lint stage's errors stop the compose (exit 2): schema, template, checks file, location."""
    from edgeci.blueprint import lint_file
    from edgeci.errors import BlueprintError

    errors = lint_file(path, cfg).errors
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BlueprintError(f"blueprint fails lint: {first.message}{more}", where=first.where,
                             fix=f"run edgeci lint {path}")


def _committed(cfg: Config, files: list[Path], allow_uncommitted: bool) -> list[str]:
    """A gated build builds exactly a committed tree: BlueprintError (exit 2) naming the blueprint or checks files
    that differ from HEAD (modified, staged or untracked). --allow-uncommitted (gate.source local only) composes
    them anyway for an experiment and returns their names for the record, where the gate denies the candidate."""
    from edgeci.errors import BlueprintError
    from edgeci.tools import git
    from edgeci.ui import warn

    top = git.toplevel(files[0])
    if top is None:
        return []  # outside git: nothing to compare with; the gate denies it (its authors are unknown)
    rels = [f.resolve().relative_to(top.resolve()).as_posix() for f in files if f.exists()]
    dirty = git.uncommitted(top, rels)
    if not dirty:
        return []
    named = ", ".join(f"{p} {why}" for p, why in dirty)
    if allow_uncommitted:
        if cfg.gate.source != "local":
            raise BlueprintError(f"--allow-uncommitted is for local experiments, but gate.source is "
                                 f"{cfg.gate.source} ({named})", where=str(top),
                                 fix="commit the files (git add + git commit) and compose again")
        warn(f"composing uncommitted files ({named}): an experiment — the gate denies this candidate")
        return [p for p, _ in dirty]
    raise BlueprintError(f"a gated build builds only committed files: {named}", where=str(top),
                         fix=f"commit them (git add {' '.join(p for p, _ in dirty)} && git commit), or for a local "
                             "experiment pass --allow-uncommitted (gate.source local; the gate will deny it)")


def _rebuild_version(bp: Blueprint, cfg: Config, ref: str) -> Blueprint:
    """For a scheduled rebuild: production's next patch version when the blueprint's is not above it.

    Production only takes higher versions (the gate's anti-rollback rule), and Image Builder itself bumps
    the patch of an unchanged blueprint; edgeci does it explicitly and records what it did."""
    from edgeci.blueprint import with_version
    from edgeci.production import ProdSettings, read_production
    from edgeci.ui import say
    from edgeci.version import compare_versions, next_patch

    prod = read_production(ProdSettings.from_config(cfg), ref).production.version
    if not prod or compare_versions(bp.version, prod) > 0:
        return bp
    version = next_patch(prod)
    say(f"compose: scheduled rebuild of {bp.name} {bp.version} on top of production {prod}: composing as {version}")
    return with_version(bp, version)


def _ensure_writable(directory: Path) -> None:
    from edgeci.errors import ComposerError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".edgeci-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ComposerError(f"cannot write the build directory: {e.strerror}", where=str(e.filename or directory),
                            fix="make it writable, or set project.build_dir") from None


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import EdgeCIError
    from edgeci.record import FAILED, BuildRecord
    from edgeci.target import blueprint_path, record_file, target

    name, arch = target(cfg, args)
    from edgeci.target import is_image

    if is_image(cfg, name):  # image mode (bootc): compose = build the Containerfile
        from edgeci.imagemode import stages as _image

        return _image.compose(args, cfg, name, arch)
    path = blueprint_path(cfg, args.blueprint)
    rec = BuildRecord.load_or_new(record_file(cfg, name, arch))
    try:
        return _compose(args, cfg, name, arch, path, rec)
    except (EdgeCIError, KeyboardInterrupt) as e:
        # A compose of changed inputs that did not finish invalidates the compose section and every later one: the
        # older candidate's "passed" must not survive it (run --resume would carry on with it). With unchanged
        # inputs (a wrong --parent, an unreachable composer) the recorded candidate is still the blueprint's.
        previous = rec.get("compose") if rec.path.exists() else None
        if previous is not None and previous.get("status") == "passed" and _inputs_changed(rec, path):
            rec.set("compose", {"error": str(e) if isinstance(e, EdgeCIError) else "interrupted"}, status=FAILED)
            rec.save()
        raise


def _inputs_changed(rec: BuildRecord, path: Path) -> bool:
    """Whether the blueprint, its checks file or the git commit differ from what the record's blueprint section
    describes (or the record has none)."""
    import hashlib

    from edgeci.checks import file_sha256
    from edgeci.errors import EdgeCIError
    from edgeci.tools import git

    bp = rec.get("blueprint") or {}
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        checks = file_sha256(path.with_name(f"{path.stem}.checks.yaml"))
    except (OSError, EdgeCIError):
        return True
    if bp.get("sha256") != sha or ("checks_sha256" in bp and bp["checks_sha256"] != checks):
        return True
    return bool(bp.get("git_sha")) and bp.get("git_sha") != git.head_sha(path.resolve())


def _compose(args: argparse.Namespace, cfg: Config, name: str, arch: str, path: Path, rec: BuildRecord) -> int:
    import os
    import time

    from edgeci import blueprint as blueprints
    from edgeci import templates
    from edgeci.checks import file_sha256, load_checks, rendered_yaml
    from edgeci.composer import backend
    from edgeci.composer.base import ComposeRequest, ComposeState
    from edgeci.errors import BlueprintError
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.oci import sha256_file
    from edgeci.record import FAILED
    from edgeci.target import check_location
    from edgeci.tools import git
    from edgeci.ui import error, progress, say, warn

    check_location(path, cfg.root)
    bp = blueprints.load(path)
    if bp.name != name:
        raise BlueprintError(f"blueprint is named '{bp.name}' but its file is {path.name}", where=str(path),
                             fix=f"rename the file to {bp.name}.toml or set name = \"{name}\"")
    # Values first: registered with the mask before lint or anything else may print them.
    declared = templates.declared(cfg, name)
    used = sorted({u.name for u in templates.uses(bp.data)})
    checks_path = bp.checks_path
    checks_template = checks_path.read_text(encoding="utf-8") if checks_path.is_file() else ""
    used_in_checks = sorted({u.name for u in templates.uses({"checks": checks_template})}) \
        if templates.has_placeholders(checks_template) else []
    where = f"{_display(cfg, path)} (blueprints.{name}.variables)"
    values = templates.values_from_env(sorted(set(used) | set(used_in_checks)), os.environ, blueprint=name,
                                       where=where) if set(used) | set(used_in_checks) <= set(declared) else {}
    templates.register_values(values)
    _lint(path, cfg)
    uncommitted = _committed(cfg, [path, checks_path], args.allow_uncommitted)
    checks_text = ""
    if checks_template:
        load_checks(checks_path, values=values)  # strict: a bad checks file stops here with file:line
        checks_text = rendered_yaml(checks_template, values) if used_in_checks else checks_template

    if args.backend:
        cfg.composer.backend = args.backend
    if args.socket:
        cfg.composer.socket = args.socket
    _ensure_writable(cfg.build_dir)
    dest = cfg.build_dir / name / arch
    _ensure_writable(dest)

    git_sha = git.head_sha(path.resolve())
    ref = args.ref or cfg.ref(name, arch)
    written_version = bp.version
    if args.rebuild:
        bp = _rebuild_version(bp, cfg, ref)
    rendered = templates.render_blueprint(bp.text, bp.data, declared, values, blueprint=name,
                                          source=_display(cfg, path), template_sha256=bp.sha256)
    bp_section: dict[str, Any] = {"name": bp.name, "version": bp.version, "path": _display(cfg, path),
                                  "git_sha": git_sha, "sha256": bp.sha256,
                                  "checks_path": _display(cfg, checks_path) if checks_template else "",
                                  "checks_sha256": file_sha256(checks_path) if checks_template else ""}
    if bp.version != written_version:
        bp_section["rebuild_of"] = written_version
    compose_only: dict[str, Any] = {**rendered.record(), "uncommitted": uncommitted}
    if used_in_checks:
        compose_only["checks_variables"] = {n: templates.value_sha256(values[n]) for n in used_in_checks}
    old = rec.get("blueprint")
    if not old or any(old.get(k) != v for k, v in bp_section.items()) or old.get("status") != "passed":
        rec.set("blueprint", {**bp_section, **compose_only})  # a changed blueprint: later sections are another's
    else:
        old.update(compose_only)

    composer = backend(cfg)
    image_type = args.type or cfg.image_type(name)
    request = ComposeRequest(
        blueprint_name=bp.name, blueprint_toml=rendered.text, image_type=image_type,
        ref=ref, parent=args.parent or "", url=args.url or "", arch=arch,
        distro=cfg.distro(name), size=cfg.composer.size, git_sha=git_sha, checks_yaml=checks_text,
        blueprint_version=bp.version,
    )
    composer.push_blueprint(bp.name, rendered.text)
    started = time.monotonic()
    compose_id = composer.start(request)
    say(f"compose {compose_id}: {bp.name} {bp.version} {image_type} ref {request.ref} ({composer.name})")
    if rendered.variables:
        say("template " + bp.sha256[:12] + ": " + ", ".join(f"{n} sha256 {h[:12]}" for n, h in
                                                             rendered.variables.items()))
    status = composer.wait(compose_id, deadline=cfg.composer.deadline, progress=progress(f"compose {compose_id[:8]}"))
    seconds = time.monotonic() - started
    base: dict[str, Any] = {"backend": composer.name, "id": compose_id, "type": image_type, "ref": request.ref,
                            "url": request.url}

    if status.state is not ComposeState.FINISHED:
        from edgeci.composer.base import compose_failed, save_compose_log

        logs = composer.logs(compose_id)
        log_path = save_compose_log(compose_id, logs, dest)
        rec.set("compose", {**base, "artifact": "", "artifact_sha256": "", "commit": "", "parent": request.parent,
                            "packages": [], "warnings": [], "log": _display(cfg, log_path)}, status=FAILED)
        rec.save()
        report = write_junit(cfg.reports_dir, "compose", name, arch, [Case("compose", Outcome.FAILED, "", "")])
        failure = compose_failed(status, logs, log_path, report)
        write_junit(cfg.reports_dir, "compose", name, arch,
                    [Case("compose", Outcome.FAILED, failure.message, logs or failure.message, seconds)])
        error(str(failure))
        return 1

    artifact = composer.download(compose_id, dest)
    info = composer.info(compose_id)
    sha = sha256_file(artifact)
    warnings = [str(w) for w in info.get("warnings", [])]
    for w in warnings:
        warn(w)
    section = {**base, "artifact": _display(cfg, artifact), "artifact_sha256": sha, "commit": info.get("commit", ""),
               "parent": info.get("parent", request.parent), "packages": info.get("packages", []),
               "warnings": warnings, "version": str(info.get("version") or bp.version)}
    if info.get("os"):
        section["os"] = str(info["os"])  # the local composer's OS: the boot test's auto backend follows it
    rec.set("compose", section)
    rec.save()
    _sign(cfg, rec, name, arch, path, bp.checks_path, rendered.variables)
    output = "\n".join([f"commit {section['commit']}", f"ref {request.ref}",
                        f"parent {section['parent'] or '(none)'}", f"artifact {artifact} sha256 {sha}",
                        f"blueprint {bp_section['path']} sha256 {bp.sha256}",
                        *(f"variable {n} sha256 {h}" for n, h in rendered.variables.items()),
                        *([f"checks {bp_section['checks_path']} sha256 {bp_section['checks_sha256']}"]
                          if checks_template else []),
                        *(f"warning: {w}" for w in warnings)])
    report = write_junit(cfg.reports_dir, "compose", name, arch, [Case("compose", Outcome.PASSED, "", output, seconds)])
    say(f"compose {compose_id}: commit {section['commit']}" + (f" (parent {section['parent']})"
                                                              if section["parent"] else ""))
    say(f"artifact {section['artifact']}")
    say(f"record {rec.path}; report {report}")
    return 0


def _sign(cfg: Config, rec: BuildRecord, name: str, arch: str, blueprint: Path, checks: Path,
          variables: dict[str, str]) -> None:
    """Signed provenance of this compose (EDGECI_COMPOSE_KEY): the first link of the evidence production checks."""
    from edgeci.attest import compose_evidence, signing_key
    from edgeci.evidence import env_var
    from edgeci.ui import say, warn

    key = signing_key("compose", cfg)
    if key is None:
        warn(f"compose {name}/{arch}: {env_var('compose')} is not set: no signed provenance, and production will "
             "not accept this candidate")
        return
    bundle = compose_evidence(cfg, rec, name, arch, blueprint_file=blueprint, checks_file=checks, key=key,
                              variables=variables)
    say(f"compose {name}/{arch}: signed the provenance with the compose key {key.public.label} -> {bundle}")
