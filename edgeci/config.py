"""edgeci.yaml → dataclasses. Precedence: command line > EDGECI_* environment > file > defaults.

No file at all is the embedded default: everything runs on this machine (local composer, OCI
directory, stage served on 127.0.0.1, qemu or sysroot boot test, local approvals, production repo
under build/prod/repo). Unknown keys are errors with their path, line and a did-you-mean.
Environment: EDGECI_<SECTION>_<KEY> (e.g. EDGECI_COMPOSER_BACKEND=weldr); secrets come only from
the environment (EDGECI_REGISTRY_PASSWORD, EDGECI_GITLAB_TOKEN, …) and are registered for masking.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.errors import ConfigError

CONFIG_NAME = "edgeci.yaml"
IMAGE_TYPES = ("edge-commit", "edge-container", "edge-installer", "edge-simplified-installer",
               "edge-raw-image")


@dataclass
class ProjectConfig:
    build_dir: str = "build"
    reports_dir: str = "reports"
    blueprints_dir: str = "blueprints"
    arch: str = "x86_64"
    distro: str = "rhel-9"
    image_type: str = "edge-container"


@dataclass
class ComposerConfig:
    backend: str = "local"  # local | weldr | cloud
    socket: str = "/run/weldr/api.socket"  # weldr over a unix socket
    url: str = ""  # weldr over TCP, or the Cloud API base URL
    token_url: str = ""  # cloud: OAuth2 token endpoint (refresh-token flow)
    client_id: str = "rhsm-api"
    request_timeout: float = 300.0  # POST /compose depsolves before answering
    poll_interval: float = 10.0
    poll_max_interval: float = 30.0
    deadline: float = 3600.0
    kernel: str = ""  # local: path to a vmlinuz (default: Debian's linux-image-amd64, cached)
    cache_dir: str = ""  # local: default ~/.cache/edgeci
    size: int = 0
    upload_profile: str = ""  # weldr: a composer-cli upload profile TOML (provider + [settings])
    repositories: list[str] = field(default_factory=list)  # cloud: RPM repository baseurls to build from
    rhsm: bool = False  # cloud: the repositories (and ostree url) need a subscription
    upload_target: str = "local"  # cloud: local (download from composer) | aws.s3 (hosted service, edge-commit)
    upload_region: str = ""  # cloud: the AWS region for upload_target aws.s3
    # cloud token: EDGECI_COMPOSER_TOKEN (an OAuth2 refresh/offline token; never in the file)


@dataclass
class RegistryConfig:
    # Where `edgeci push` copies the edge-container archive. {blueprint} is substituted.
    # oci:DIR (the embedded default, no registry) or docker://HOST/REPO.
    image: str = "oci:build/oci/{blueprint}"
    tags: list[str] = field(default_factory=list)  # extra tags beside <version> and latest
    authfile: str = ""
    tls_verify: bool = True
    retry_times: int = 3  # skopeo --retry-times, and edgeci's own retries of HTTP 5xx answers
    retry_backoff: float = 2.0  # seconds before the first 5xx retry; doubles each time


@dataclass
class StageConfig:
    mode: str = "serve"  # serve (edgeci serves the repo) | wait (a stage host runs the container)
    url: str = ""  # the stage repo URL clients pull from, e.g. http://stage:8080/repo
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    dir: str = "build/stage/{blueprint}"
    max_archive_bytes: int = 8 * 1024**3
    wait_deadline: float = 900.0
    wait_interval: float = 5.0
    container_name: str = "edge-stage"
    container_port: int = 8080
    repo_path: str = "usr/share/nginx/html/repo"  # the ostree repo inside the edge-container image
    host_authfile: str = ""  # stage host: registry authfile for podman run / auto-update


@dataclass
class ProdConfig:
    repo: str = "build/prod/repo"
    url: str = ""  # how clients reach production; default: edgeci serves repo on 127.0.0.1
    gpg_key: str = ""
    gpg_homedir: str = ""
    sign_ed25519_key: str = ""  # path to an ed25519 secret key file, when ostree supports it
    delta_from_releases: int = 3
    retention: int = 10
    delta_args: list[str] = field(default_factory=list)  # e.g. ["--max-bsdiff-size=128"]
    lock_timeout: float = 600.0
    fsck: str = "changed"  # promote verifies: changed (objects that differ from production) | full (whole commit)
    source: str = "stage"  # promote pulls from: stage (the stage repo URL) | image (the pushed image, by digest)


@dataclass
class LibvirtConfig:
    uri: str = "qemu:///system"
    location: str = ""  # installer tree URL or ISO for virt-install
    memory: int = 2048
    vcpus: int = 2
    disk_size: int = 10
    network: str = "default"
    ssh_user: str = "core"
    ssh_key: str = ""
    ssh_timeout: float = 600.0
    os_variant: str = ""  # virt-install --os-variant (default from the distro: rhel9-unknown, …)
    gpg_key: str = ""  # armored public key: production's remote verifies commits with it after install


@dataclass
class BootTestConfig:
    backend: str = "auto"  # auto (qemu if installed, else sysroot) | qemu | sysroot | libvirt
    memory: int = 512
    timeout: float = 120.0
    kvm: str = "auto"  # auto (probe) | on | off
    kvm_probe_timeout: float = 5.0  # seconds a KVM guest gets to print its kernel banner (auto)
    parallel: bool = True  # install and upgrade+rollback run on two devices at once
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)


@dataclass
class GitLabConfig:
    url: str = ""  # https://gitlab.example.com; CI_SERVER_URL in GitLab CI
    project: str = ""  # path or id; CI_PROJECT_ID in GitLab CI
    environment: str = "production"
    # token: EDGECI_GITLAB_TOKEN (never in the file)


@dataclass
class JenkinsConfig:
    url: str = ""
    job: str = ""
    user: str = ""
    # token: EDGECI_JENKINS_TOKEN (never in the file)


@dataclass
class GateConfig:
    source: str = "local"  # local | gitlab | jenkins
    approvals_required: int = 1
    allowed_users: list[str] = field(default_factory=list)  # empty = anyone but the authors
    allowed_groups: list[str] = field(default_factory=list)
    allow_fork: bool = False
    windows: list[str] = field(default_factory=list)  # "Mon-Fri 08:00-17:00" (UTC)
    freeze: list[str] = field(default_factory=list)  # "2026-12-20..2027-01-05"
    gitlab: GitLabConfig = field(default_factory=GitLabConfig)
    jenkins: JenkinsConfig = field(default_factory=JenkinsConfig)


@dataclass
class LintConfig:
    allow_plaintext_passwords: bool = False
    production_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class BlueprintConfig:
    ref: str = ""  # default rhel/9/<arch>/edge, or …/edge/<name> when there are several
    distro: str = ""
    arch: list[str] = field(default_factory=list)
    image_type: str = ""


@dataclass
class Config:
    project: ProjectConfig = field(default_factory=ProjectConfig)
    composer: ComposerConfig = field(default_factory=ComposerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    prod: ProdConfig = field(default_factory=ProdConfig)
    boot_test: BootTestConfig = field(default_factory=BootTestConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    lint: LintConfig = field(default_factory=LintConfig)
    blueprints: dict[str, BlueprintConfig] = field(default_factory=dict)

    # Not from the file: where it came from and the directory paths are relative to.
    source: str = field(default="(embedded default)", compare=False)
    root: Path = field(default_factory=Path.cwd, compare=False)

    # -- derived values ------------------------------------------------------------------------
    def path(self, value: str, **subst: str) -> Path:
        """A config path made absolute against the config's directory, with {name} substituted."""
        p = Path(os.path.expanduser(value.format(**subst) if subst else value))
        return p if p.is_absolute() else self.root / p

    @property
    def build_dir(self) -> Path:
        return self.path(self.project.build_dir)

    @property
    def reports_dir(self) -> Path:
        return self.path(self.project.reports_dir)

    @property
    def blueprints_dir(self) -> Path:
        return self.path(self.project.blueprints_dir)

    def blueprint(self, name: str) -> BlueprintConfig:
        return self.blueprints.get(name) or BlueprintConfig()

    def image_type(self, name: str) -> str:
        return self.blueprint(name).image_type or self.project.image_type

    def arches(self, name: str) -> list[str]:
        return self.blueprint(name).arch or [self.project.arch]

    def distro(self, name: str) -> str:
        return self.blueprint(name).distro or self.project.distro

    def ref(self, name: str, arch: str | None = None) -> str:
        """The ostree ref: rhel/9/<arch>/edge, or …/edge/<name> when the repo has several blueprints."""
        bp = self.blueprint(name)
        if bp.ref:
            return bp.ref
        arch = arch or self.arches(name)[0]
        major = "".join(ch for ch in self.distro(name).split("-")[-1].split(".")[0] if ch.isdigit()) or "9"
        base = f"rhel/{major}/{arch}/edge"
        return f"{base}/{name}" if self.several_blueprints() else base

    def several_blueprints(self) -> bool:
        d = self.blueprints_dir
        names = {p.stem for p in d.glob("*.toml")} if d.is_dir() else set()
        return len(names | set(self.blueprints)) > 1

    def secret(self, name: str) -> str:
        """A secret from the environment (EDGECI_<NAME>), registered for masking; '' when unset."""
        from edgeci.tools.run import register_secret

        value = os.environ.get(f"EDGECI_{name.upper()}", "")
        register_secret(value)
        return value


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _line_map(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in the YAML document to its 1-based line, for error messages."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = (*path, str(i))
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except yaml.YAMLError:
        pass
    return lines


class _Ctx:
    def __init__(self, source: str, lines: dict[tuple[str, ...], int],
                 origins: dict[tuple[str, ...], str] | None = None) -> None:
        self.source = source
        self.lines = lines
        self.origins = origins or {}  # key path → "environment EDGECI_…" / "command line (--set …)"

    def where(self, path: tuple[str, ...]) -> str:
        key = ".".join(path) if path else "(top level)"
        for n in range(len(path), 0, -1):
            origin = self.origins.get(path[:n])
            if origin:
                return f"{origin}: {key}"
            line = self.lines.get(path[:n])
            if line:
                return f"{self.source}:{line}: {key}"
        return f"{self.source}: {key}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: tuple[str, ...], ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be {_type_name(tp)}, not {type(value).__name__}", where=ctx.where(path))
        return _build(tp, value, path, ctx)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"must be a list, not {type(value).__name__}", where=ctx.where(path))
        return [_convert(v, item, (*path, str(i)), ctx) for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping, not {type(value).__name__}", where=ctx.where(path))
        return {str(k): _convert(v, vt, (*path, str(k)), ctx) for k, v in value.items()}
    if origin is types.UnionType:
        raise TypeError("union types are not used in config")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"must be {_type_name(tp)}, not {value!r}", where=ctx.where(path))


def _build(cls: Any, data: Mapping[str, Any], path: tuple[str, ...], ctx: _Ctx) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.compare}
    kwargs = {}
    for key, value in data.items():
        k = str(key)
        if k not in fields:
            close = difflib.get_close_matches(k, list(fields), n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key '{k}'", where=ctx.where((*path, k)), fix=fix)
        if value is None and not dataclasses.is_dataclass(hints[k]):
            continue  # an empty YAML value means "the default"
        kwargs[k] = _convert(value if value is not None else {}, hints[k], (*path, k), ctx)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a mapping", where=where)
        cur = nxt
    cur[parts[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """EDGECI_SECTION_KEY=value → {"section.key": value} for known sections and keys."""
    out: dict[str, str] = {}
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.compare and f.name != "blueprints"}
    hints = typing.get_type_hints(Config)
    for name, value in env.items():
        if not name.startswith("EDGECI_"):
            continue
        rest = name[len("EDGECI_"):].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                keys = {f.name for f in dataclasses.fields(hints[section])}
                if key in keys:
                    out[f"{section}.{key}"] = value
                break
    return out


def find_config(start: Path | None = None) -> Path | None:
    """edgeci.yaml in the working directory (CI jobs run at the repository root)."""
    p = (start or Path.cwd()) / CONFIG_NAME
    return p if p.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> Config:
    """Load edgeci.yaml (or the embedded default), then EDGECI_* env, then command-line overrides.

    `path` None: ./edgeci.yaml if present (or EDGECI_CONFIG), else the embedded default.
    """
    import yaml

    env = os.environ if env is None else env
    if path is None and env.get("EDGECI_CONFIG"):
        path = env["EDGECI_CONFIG"]
    cfg_path = Path(path) if path is not None else find_config(root)
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "(embedded default)"
    if cfg_path is not None:
        source = str(cfg_path)
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", where=str(cfg_path),
                              fix="check the path, or omit --config to use the embedded default") from None
        except OSError as e:
            raise ConfigError(f"cannot read config: {e.strerror}", where=str(cfg_path)) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{cfg_path}:{mark.line + 1}" if mark else str(cfg_path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"invalid YAML: {problem}", where=where,
                              fix="fix the syntax (indentation, quoting)") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("the top level must be a mapping of sections", where=f"{cfg_path}:1")
        data = loaded
        lines = _line_map(text)
    origins: dict[tuple[str, ...], str] = {}
    for dotted, value in _env_overrides(env).items():
        origins[tuple(dotted.split("."))] = f"environment EDGECI_{dotted.replace('.', '_').upper()}"
        _set_path(data, dotted, value, where=origins[tuple(dotted.split("."))])
    for dotted, value in (overrides or {}).items():
        origins[tuple(dotted.split("."))] = f"command line (--set {dotted})"
        _set_path(data, dotted, value, where=origins[tuple(dotted.split("."))])
    ctx = _Ctx(source, lines, origins)
    cfg: Config = _build(Config, data, (), ctx)
    cfg.source = source
    cfg.root = (cfg_path.resolve().parent if cfg_path is not None else (root or Path.cwd()))
    _validate(cfg, ctx)
    return cfg


def _choice(value: str, allowed: tuple[str, ...], path: tuple[str, ...], ctx: _Ctx) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(allowed)}"
        raise ConfigError(f"'{value}' is not allowed", where=ctx.where(path), fix=fix)


def _validate(cfg: Config, ctx: _Ctx) -> None:
    _choice(cfg.composer.backend, ("local", "weldr", "cloud"), ("composer", "backend"), ctx)
    _choice(cfg.composer.upload_target, ("local", "aws.s3"), ("composer", "upload_target"), ctx)
    _choice(cfg.stage.mode, ("serve", "wait"), ("stage", "mode"), ctx)
    _choice(cfg.boot_test.backend, ("auto", "qemu", "sysroot", "libvirt"), ("boot_test", "backend"), ctx)
    _choice(cfg.boot_test.kvm, ("auto", "on", "off"), ("boot_test", "kvm"), ctx)
    _choice(cfg.gate.source, ("local", "gitlab", "jenkins"), ("gate", "source"), ctx)
    _choice(cfg.prod.fsck, ("changed", "full"), ("prod", "fsck"), ctx)
    _choice(cfg.prod.source, ("stage", "image"), ("prod", "source"), ctx)
    _choice(cfg.project.image_type, IMAGE_TYPES, ("project", "image_type"), ctx)
    for name, bp in cfg.blueprints.items():
        if bp.image_type:
            _choice(bp.image_type, IMAGE_TYPES, ("blueprints", name, "image_type"), ctx)
    if cfg.stage.mode == "wait" and not cfg.stage.url:
        raise ConfigError("stage.mode is 'wait' but stage.url is empty", where=ctx.where(("stage", "mode")),
                          fix="set stage.url to the stage host's repo URL, e.g. http://stage:8080/repo")
    if cfg.gate.approvals_required < 0:
        raise ConfigError("must be 0 or more", where=ctx.where(("gate", "approvals_required")))
