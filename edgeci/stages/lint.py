"""`edgeci lint [PATH...] [--base REV] [--json]`: strict blueprint lint, the first pipeline stage.

Prints one line per finding (`file:line: severity: [rule] message`), writes
reports/lint-<name>-<arch>.xml (one testcase per blueprint per rule) and the record's `blueprint` and
`lint` sections. Exit 1 when any finding is an error (a TOML syntax error included), 2 for bad input.
With --base, a blueprint that changed since BASE must carry a higher version (`git show BASE:path`).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.blueprint import LintResult
    from edgeci.junit import Case

HELP = "lint blueprints: strict schema, image-type support, secrets, versions (exit 1 on errors)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="blueprint files or directories (default: the blueprints directory)")
    p.add_argument("--base", metavar="REV", default=None,
                   help="git revision to compare with: a changed blueprint must raise its version")
    p.add_argument("--json", action="store_true", help="print the findings as JSON instead of lines")
    p.add_argument("--rebuild", action="store_true",
                   help="scheduled rebuild: a version equal to production's passes (compose --rebuild bumps it)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.blueprint import iter_blueprint_files, lint_file
    from edgeci.errors import BlueprintError
    from edgeci.imagemode import stages as _image
    from edgeci.ui import say

    if args.paths:
        paths = [Path(p) for p in args.paths]
        images = [_containerfile(p) for p in paths if _containerfile(p) is not None]
        files = iter_blueprint_files([p for p in paths if _containerfile(p) is None])  # findings name them as given
        images += [_containerfile(d) for p in paths if p.is_dir() for d in sorted(p.iterdir())
                   if d.is_dir() and _containerfile(d) is not None]
    else:
        from edgeci.imagemode.source import discover

        paths = [cfg.blueprints_dir]
        files = [_short(f) for f in iter_blueprint_files(paths)]
        images = [_short(s.containerfile) for s in discover(cfg.blueprints_dir)]
    image_results = []
    for cf in images:
        assert cf is not None
        name, findings = _image.lint_image(cfg, cf)
        _image.write_lint_outputs(cfg, cf, name, findings, _display(cfg, cf))
        image_results.append((cf, name, findings))
    if images and not files:
        return _report_images(args, image_results)
    if not files:
        raise BlueprintError("no blueprints (*.toml) found", where=", ".join(str(p) for p in paths),
                             fix="add blueprints/NAME.toml or pass the blueprint files to lint")

    base = _Base(args.base, files) if args.base else None
    results = []
    for f in files:
        base_text = base.text_for(f) if base else None
        prod = _record_production_version(cfg, f.stem)
        configured = cfg.lint.production_versions.get(f.stem)
        if prod and configured:  # both known: the higher one is what production must exceed
            prod = _max_version(configured, prod)
        results.append(lint_file(f, cfg, base_text=base_text, base_given=base is not None,
                                 production_version=prod, rebuild=args.rebuild))

    for r in results:
        _write_outputs(cfg, r)

    errors = sum(len(r.errors) for r in results)
    warnings = sum(len(r.warnings) for r in results)
    image_errors = sum(1 for _, _, fs in image_results for f in fs if f.severity == "error")
    if image_results and not args.json:
        _report_images(args, image_results)
    if args.json:
        say(json.dumps({
            "blueprints": [{"path": str(r.path), "name": r.name, "ok": r.ok,
                            "findings": [{**f.as_dict(), "key": f.key} for f in r.findings]} for r in results],
            "errors": errors, "warnings": warnings,
            **({"images": [{"path": str(cf), "name": n, "ok": not any(f.severity == "error" for f in fs),
                            "findings": [f.as_dict() for f in fs]} for cf, n, fs in image_results]}
               if image_results else {}),
        }, indent=2))
    else:
        for r in results:
            for finding in r.findings:
                say(finding.line())
        say(f"lint: {len(results)} blueprint{'s' if len(results) != 1 else ''}, "
            f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}")
    return 1 if errors or image_errors else 0


def _containerfile(path: Path) -> Path | None:
    """An image-mode source: a Containerfile, or a directory holding one; else None."""
    from edgeci.imagemode.source import CONTAINERFILE

    if path.name == CONTAINERFILE and path.is_file():
        return path
    if path.is_dir() and (path / CONTAINERFILE).is_file():
        return path / CONTAINERFILE
    return None


def _report_images(args: argparse.Namespace, results: list[tuple[Path, str, list[Any]]]) -> int:
    """Print image-mode findings (file:line) and a summary line; 1 when any is an error."""
    from edgeci.ui import say

    errors = sum(1 for _, _, fs in results for f in fs if f.severity == "error")
    warnings = sum(1 for _, _, fs in results for f in fs if f.severity != "error")
    if args.json:
        say(json.dumps({"images": [{"path": str(cf), "name": n, "ok": not any(f.severity == "error" for f in fs),
                                    "findings": [f.as_dict() for f in fs]} for cf, n, fs in results],
                        "errors": errors, "warnings": warnings}, indent=2))
    else:
        for _, _, fs in results:
            for f in fs:
                say(f.line())
        say(f"lint: {len(results)} image{'s' if len(results) != 1 else ''} (Containerfile), {errors} "
            f"error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}")
    return 1 if errors else 0


class _Base:
    """The blueprints' text at the base revision (git show BASE:path), following renames."""

    def __init__(self, base: str, files: list[Path]) -> None:
        from edgeci.changes import ChangesError, resolve_base
        from edgeci.tools import git

        top = git.toplevel(files[0].resolve())
        if top is None:
            raise ChangesError(f"--base needs a git work tree, but '{files[0]}' is not in one",
                               fix="run edgeci lint in a clone of the repository, or drop --base")
        self.repo = top
        self.sha = resolve_base(top, base)
        # New path → old path for blueprints renamed since BASE (committed renames only).
        head = git.rev_parse(top, "HEAD") or "HEAD"
        self.renamed = {e.path: e.old_path for e in git.diff_name_status(top, self.sha, head)
                        if e.status == "R" and e.old_path}

    def text_for(self, path: Path) -> str | None:
        from edgeci.tools import git

        try:
            rel = path.resolve().relative_to(self.repo.resolve()).as_posix()
        except ValueError:
            return None  # outside the repository: no history to compare with
        return git.show(self.repo, self.sha, self.renamed.get(rel, rel))


def _record_production_version(cfg: Config, name: str) -> str | None:
    """The version a previous run promoted, as recorded in this blueprint's records (any arch)."""
    from edgeci.errors import RecordError
    from edgeci.record import BuildRecord, record_path

    best: str | None = None
    for arch in cfg.arches(name):
        p = record_path(cfg.build_dir, name, arch)
        if not p.is_file():
            continue
        try:
            sec = BuildRecord.load(p).get("promote") or {}
        except RecordError:
            continue
        v = sec.get("version")
        if isinstance(v, str) and v and sec.get("status") == "passed":
            best = _max_version(best, v)
    return best


def _max_version(a: str | None, b: str) -> str:
    from edgeci.version import compare_versions

    if a is None:
        return b
    try:
        return b if compare_versions(b, a) > 0 else a
    except ValueError:
        return a


def _short(path: Path) -> Path:
    """The path relative to the working directory when it is below it (findings read file:line)."""
    if not path.is_absolute():
        return path
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _display(cfg: Config, path: Path) -> str:
    try:
        return path.resolve().relative_to(cfg.root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _cases(r: LintResult) -> list[Case]:
    from edgeci.blueprint import RULES
    from edgeci.junit import Case, Outcome

    cases = []
    for rule, meaning in RULES.items():
        errors = [f for f in r.errors if f.rule == rule]
        warns = [f for f in r.warnings if f.rule == rule]
        output = "\n".join(f.line() for f in errors + warns)
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            cases.append(Case(rule, Outcome.FAILED, f"{first.where}: {first.message}{more}", output))
        elif rule in r.skipped:
            cases.append(Case(rule, Outcome.SKIPPED, r.skipped[rule], output))
        else:
            cases.append(Case(rule, Outcome.PASSED, "", output or f"passed: {meaning}"))
    return cases


@functools.lru_cache(maxsize=64)
def _head_sha(directory: Path) -> str:
    """HEAD of the repository holding `directory` — asked once per directory, not once per blueprint."""
    from edgeci.tools import git

    return git.head_sha(directory)


def _write_outputs(cfg: Config, r: LintResult) -> None:
    """reports/lint-<name>-<arch>.xml and the record's blueprint + lint sections, for every arch."""
    from edgeci.checks import ChecksError, file_sha256
    from edgeci.errors import RecordError
    from edgeci.junit import write_junit
    from edgeci.record import FAILED, PASSED, BuildRecord, record_path
    from edgeci.ui import warn

    cases = _cases(r)
    git_sha = _head_sha(r.path.resolve().parent)
    checks = r.path.with_name(f"{r.path.stem}.checks.yaml")
    try:
        checks_sha = file_sha256(checks) if checks.is_file() else ""
    except ChecksError:
        checks_sha = ""  # unreadable: the checks finding says so
    blueprint: dict[str, Any] = {
        "name": r.blueprint.name if r.blueprint and r.blueprint.name else r.name,
        "version": r.blueprint.version if r.blueprint else "",
        "path": _display(cfg, r.path),
        "git_sha": git_sha,
        "sha256": r.sha256,
        # the checks file is part of what is built and tested: its hash binds the boot test to it
        "checks_path": _display(cfg, checks) if checks_sha else "",
        "checks_sha256": checks_sha,
    }
    lint = {"findings": [f.as_dict() for f in r.findings]}
    for arch in cfg.arches(r.name):
        write_junit(cfg.reports_dir, "lint", r.name, arch, cases)
        path = record_path(cfg.build_dir, r.name, arch)
        try:
            rec = BuildRecord.load_or_new(path)
        except RecordError as e:
            warn(f"{e.message} ({path}); starting a new record")
            rec = BuildRecord(path)
        old_bp, old_lint = rec.get("blueprint"), rec.get("lint")
        if (old_bp and old_lint and all(old_bp.get(k) == v for k, v in blueprint.items())
                and old_lint.get("findings") == lint["findings"] and old_lint.get("status") == (
                    PASSED if r.ok else FAILED)):
            continue  # same blueprint, same result: keep the later stages of this candidate
        rec.set("blueprint", blueprint, status=PASSED if r.blueprint is not None else FAILED)
        rec.set("lint", lint, status=PASSED if r.ok else FAILED)
        rec.save()
