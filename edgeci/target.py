"""The target of a stage or command: a blueprint × arch — its arguments, blueprint file, record and work directory."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeci.config import ARCHES, Config, valid_name
from edgeci.errors import BlueprintError, ConfigError
from edgeci.record import FAILED, SECTIONS, BuildRecord, record_path

StageRun = Callable[[argparse.Namespace, Config], int]


def add_target_args(p: argparse.ArgumentParser) -> None:
    """BLUEPRINT (name or path to NAME.toml) and --arch."""
    p.add_argument("blueprint", metavar="BLUEPRINT", help="blueprint name (blueprints/NAME.toml) or path")
    p.add_argument("--arch", default=None, help="architecture (default: the blueprint's first, x86_64)")


def is_image(cfg: Config, name: str) -> bool:
    """Whether blueprint NAME is an image-mode (bootc) image, blueprints/NAME/Containerfile
    (edgeci.imagemode.source.kind_of: BlueprintError when NAME is both kinds)."""
    from edgeci.imagemode.source import CONTAINERFILE, KIND_IMAGE, kind_of

    if not valid_name(name) or not (cfg.blueprints_dir / name / CONTAINERFILE).is_file():
        return False
    return kind_of(cfg.blueprints_dir, name) == KIND_IMAGE


def blueprint_names(cfg: Config) -> list[str]:
    """Every blueprint: blueprints/NAME.toml and blueprints/NAME/Containerfile, sorted."""
    from edgeci.imagemode.source import discover

    d = cfg.blueprints_dir
    toml = {p.stem for p in d.glob("*.toml")} if d.is_dir() else set()
    return sorted(toml | {s.name for s in discover(d)})


def blueprint_path(cfg: Config, name_or_path: str) -> Path:
    """blueprints/NAME.toml (or, image mode, blueprints/NAME/Containerfile) for a name, or the path itself;
    BlueprintError naming both when missing."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        candidate = p if p.is_absolute() else Path.cwd() / p
    else:
        check_target(name_or_path, ARCHES[0])
        candidate = cfg.blueprints_dir / f"{name_or_path}.toml"
        if is_image(cfg, name_or_path):
            from edgeci.imagemode.source import CONTAINERFILE

            candidate = cfg.blueprints_dir / name_or_path / CONTAINERFILE
    if not candidate.is_file():
        known = blueprint_names(cfg)
        raise BlueprintError(
            f"no blueprint '{name_or_path}'",
            where=str(candidate),
            fix=f"known blueprints: {', '.join(known)}" if known else f"add {candidate}",
        )
    return candidate


def location_problem(path: Path, root: Path | None = None) -> str | None:
    """Why a blueprint (or checks) file may not be built from, or None: a symbolic link, or a file that resolves
    outside the git repository of `root` (the project; else the one holding the file's directory). Only files
    in git have authors the gate can know."""
    from edgeci.tools import git

    if path.is_symlink():
        return (f"{path} is a symbolic link (to {os.readlink(path)}); edgeci builds only regular files "
                "committed in the repository")
    top = git.toplevel(root) if root is not None else None
    top = top or git.toplevel(path.parent if path.parent.is_dir() else path)
    if top is None:
        return None
    try:
        path.resolve().relative_to(top.resolve())
    except ValueError:
        return f"{path} resolves to {path.resolve()}, outside the git repository {top}"
    return None


def check_location(path: Path, root: Path | None = None) -> None:
    """BlueprintError (exit 2) when location_problem() finds one for the blueprint or its checks file."""
    checks = path.with_name(f"{path.stem}.checks.yaml")
    for p in (path, checks):
        if p is checks and not (p.exists() or p.is_symlink()):
            continue
        problem = location_problem(p, root)
        if problem:
            raise BlueprintError(problem, where=str(p),
                                 fix="replace it with the file itself, committed inside the repository")


def blueprint_name(name_or_path: str) -> str:
    """NAME from NAME, blueprints/NAME.toml or (image mode) blueprints/NAME/Containerfile."""
    if name_or_path.endswith(".toml"):
        return Path(name_or_path).stem
    if Path(name_or_path).name == "Containerfile" and "/" in name_or_path:
        return Path(name_or_path).parent.name
    return name_or_path


def check_target(name: str, arch: str) -> None:
    """A blueprint name and an arch become directory and file names (build/NAME/ARCH, reports, the stage
    directory): the name must match ^[A-Za-z0-9._-]+$ and the arch be one Image Builder builds for."""
    if not valid_name(name):
        raise BlueprintError(f"{name!r} is not a blueprint name", where="BLUEPRINT",
                             fix="blueprint names use letters, digits, '.', '_' and '-' only")
    if arch not in ARCHES:
        raise ConfigError(f"unknown architecture {arch!r}", where="--arch", fix=f"use one of: {', '.join(ARCHES)}")


def target(cfg: Config, args: argparse.Namespace) -> tuple[str, str]:
    """(blueprint name, arch) from the parsed arguments."""
    name = blueprint_name(args.blueprint)
    arch = args.arch or cfg.arches(name)[0]
    check_target(name, arch)
    return name, arch


def record_file(cfg: Config, name: str, arch: str) -> Path:
    check_target(name, arch)
    return record_path(cfg.build_dir, name, arch)


def load_record(cfg: Config, name: str, arch: str) -> BuildRecord:
    return BuildRecord.load(record_file(cfg, name, arch))


def work_dir(cfg: Config, name: str, arch: str) -> Path:
    """build/<blueprint>/<arch>/ — where a stage keeps its files for this target."""
    check_target(name, arch)
    d = cfg.build_dir / name / arch
    d.mkdir(parents=True, exist_ok=True)
    return d


def blueprint_file(cfg: Config, name: str, section: dict[str, Any] | None) -> Path | None:
    """The blueprint TOML the candidate was built from (record path first, then blueprints/NAME.toml)."""
    if section and section.get("path"):
        p = Path(str(section["path"]))
        p = p if p.is_absolute() else cfg.root / p
        if p.is_file():
            return p
    p = cfg.blueprints_dir / f"{name}.toml"
    return p if p.is_file() else None


def ref_of(cfg: Config, name: str, arch: str, rec: BuildRecord | None = None) -> str:
    """The candidate's ref: what compose used (the record), else the configured ref for NAME/ARCH."""
    return rec.ref(cfg.ref(name, arch)) if rec is not None else cfg.ref(name, arch)


def invalidates(section: str) -> Callable[[StageRun], StageRun]:
    """A stage's run(): when it fails because of the candidate (an error with exit 1, e.g. the stage serves
    another commit), its record section is marked failed and every later one dropped, so passed sections of an
    earlier attempt never carry `run --resume` past the failure. An infrastructure error (exit 2: a registry
    answering 500, a server unreachable) records nothing: what the record says is still true, and a retry
    resumes where it stopped."""
    from edgeci.errors import EdgeCIError

    def wrap(fn: StageRun) -> StageRun:
        @functools.wraps(fn)
        def run(args: argparse.Namespace, cfg: Config) -> int:
            try:
                return fn(args, cfg)
            except EdgeCIError as e:
                if e.exit_code != 1:
                    raise
                try:
                    name, arch = target(cfg, args)
                    path = record_file(cfg, name, arch)
                    rec = BuildRecord.load(path) if path.is_file() else None
                except EdgeCIError:
                    rec = None
                # only when there is something to invalidate: this section or a later one
                if rec is not None and any(rec.get(s) is not None for s in SECTIONS[SECTIONS.index(section):]):
                    rec.set(section, {"error": e.render()}, status=FAILED)
                    rec.save()
                raise

        return run

    return wrap
