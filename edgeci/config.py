"""edgeci.yaml → dataclasses. Precedence: command line > EDGECI_* environment > file > defaults.

No file at all is the embedded default: everything runs on this machine (local composer, OCI
directory, stage served on 127.0.0.1, qemu or sysroot boot test, local approvals, production repo
under build/prod/repo). Unknown keys are errors with their path, line and a did-you-mean.
Environment: EDGECI_<SECTION>_<KEY> (e.g. EDGECI_COMPOSER_BACKEND=weldr); secrets come only from
the environment (EDGECI_REGISTRY_PASSWORD, EDGECI_GITLAB_TOKEN, …) and are registered for masking.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.errors import ConfigError
from edgeci.yamlfile import load_strict

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
    kernel: str = ""  # local, busybox OS: path to a vmlinuz (default: Debian's linux-image-amd64, cached)
    cache_dir: str = ""  # local: default ~/.cache/edgeci
    # local: which OS the commit holds. device = Debian 12 packages with systemd, sshd and GRUB (the boot test's
    # real device; the blueprint's packages are installed); busybox = the small test OS (seconds to build,
    # no packages: unit-level tests). docs/testos.md says which runs where.
    os: str = "device"
    apt_mirror: str = ""  # local, device OS: a mirror URL or sources file (default: this machine's apt sources)
    package_map: dict[str, str] = field(default_factory=dict)  # local, device OS: RHEL name -> Debian name
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
    # the release tags (<version>, latest): only the default branch's pipelines push them; review candidates
    # (merge requests, other branches) push their own tags only (EDGECI_REGISTRY_RELEASE_TAGS=false)
    release_tags: bool = True
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
    # auto (device for the local device OS, else qemu if installed, else sysroot) | device | qemu | sysroot | libvirt
    backend: str = "auto"
    memory: int = 512
    timeout: float = 120.0
    kvm: str = "auto"  # auto (probe) | on | off
    kvm_probe_timeout: float = 5.0  # seconds a KVM guest gets to print its kernel banner (auto)
    parallel: bool = True  # install and upgrade+rollback run on two devices at once
    device_memory: int = 1024  # MiB for the device backend's VM (a systemd OS with sshd)
    device_cpus: int = 2  # vCPUs of the device backend's VM (qemu runs them on threads of their own under TCG)
    # the upgrade scenario starts from the last N production releases: production's current one, and a device on
    # each older one upgrading straight to the candidate (a fleet has devices that missed updates)
    upgrade_from: int = 2
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
    # boot-test coverage the gate requires (policy.boot_requirements); empty accepted_backends = the default:
    # qemu and libvirt, plus sysroot when gate.source is local
    required_scenarios: list[str] = field(default_factory=lambda: ["install", "upgrade", "rollback"])
    accepted_backends: list[str] = field(default_factory=list)
    gitlab: GitLabConfig = field(default_factory=GitLabConfig)
    jenkins: JenkinsConfig = field(default_factory=JenkinsConfig)


@dataclass
class LintConfig:
    allow_plaintext_passwords: bool = False
    production_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageModeConfig:
    """Image mode (bootc): blueprints/NAME/Containerfile images (docs/image-mode.md). Candidates go to
    registry.image (docker://HOST/REPO); production images to `registry`. Security settings here (signing, its
    keys, allowed_base_tags, hadolint) are raised but never lowered by EDGECI_IMAGE_MODE_* or --set."""

    # production images, docker://HOST/REPO ({blueprint}); default: registry.image's host, prod/{blueprint}
    registry: str = ""
    prod_tag: str = "stable"  # the tag devices follow; promote moves it last
    stage_tag: str = "stage"  # the stage: this tag of the candidate repository points at the candidate digest
    signing: str = "gpg"  # gpg | sigstore | none (none: only in the file; devices then accept nothing)
    gpg_key: str = ""  # fingerprint of the signing key (its secret half in gpg_homedir)
    gpg_homedir: str = ""
    gpg_public_key: str = ""  # armored public key file for the device policy (default: exported from gpg_homedir)
    sigstore_key: str = ""  # cosign-format private key file
    sigstore_public_key: str = ""
    sigstore_passphrase_file: str = ""
    lookaside: str = "build/sigstore"  # where CI writes GPG signatures (registries.d lookaside-staging)
    lookaside_url: str = ""  # where devices read them (default: file:// of lookaside)
    allowed_base_tags: list[str] = field(default_factory=lambda: ["registry.redhat.io/rhel10/rhel-bootc:10.*"])
    hadolint: str = "auto"  # auto (when installed) | required | off
    base: str = "local"  # local: edgeci's own bootable test base, passed as --build-arg BASE (no
    # registry.redhat.io here); "": the Containerfile's own FROM; else a base reference pinned by digest
    build_args: dict[str, str] = field(default_factory=dict)
    releases_dir: str = "build/prod/images/{blueprint}"  # releases.json and the published evidence
    follow_tags: bool = False  # device policy: accept any tag of the production repository (bootc upgrade)


@dataclass
class BlueprintConfig:
    ref: str = ""  # default rhel/9/<arch>/edge, or …/edge/<name> when there are several
    distro: str = ""
    arch: list[str] = field(default_factory=list)
    image_type: str = ""
    variables: list[str] = field(default_factory=list)  # ${NAME} placeholders the blueprint may use


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
    image_mode: ImageModeConfig = field(default_factory=ImageModeConfig)
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



ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")  # blueprint names: they become file and directory names
# What podman accepts as a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); it also names the systemd unit.
CONTAINER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def valid_name(name: str) -> bool:
    """A blueprint name edgeci turns into paths: letters, digits, '.', '_', '-', and not '.' or '..'."""
    return bool(NAME_RE.match(name)) and name not in (".", "..")


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
    elif tp is int or tp is float:
        number: int | float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value) if tp is int else float(value)
            except ValueError:
                pass
        if number is not None and tp is int and isinstance(number, float):
            number = None  # 2.5 is not an integer
        if number is not None:
            # every count, size, port and duration in edgeci.yaml is a finite number of 0 or more
            if not math.isfinite(number):
                raise ConfigError(f"must be a finite number, not {value!r}", where=ctx.where(path),
                                  fix="give a number of seconds (or a count), e.g. 600")
            if number < 0:
                raise ConfigError(f"must be 0 or more, not {value!r}", where=ctx.where(path))
            return float(number) if tp is float else int(number)
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
        loaded, lines = load_strict(text, str(cfg_path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("the top level must be a mapping of sections", where=f"{cfg_path}:1")
        data = loaded
    file_data = copy.deepcopy(data)
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
    if origins:
        _security_floor(_build(Config, file_data, (), _Ctx(source, lines)), cfg, ctx)
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
    _choice(cfg.composer.os, ("device", "busybox"), ("composer", "os"), ctx)
    if cfg.boot_test.upgrade_from < 1:
        raise ConfigError(f"boot_test.upgrade_from must be 1 or more, not {cfg.boot_test.upgrade_from}",
                          where=ctx.where(("boot_test", "upgrade_from")),
                          fix="1 upgrades from production's current release only")
    _choice(cfg.boot_test.backend, ("auto", "device", "qemu", "sysroot", "libvirt"), ("boot_test", "backend"), ctx)
    _choice(cfg.boot_test.kvm, ("auto", "on", "off"), ("boot_test", "kvm"), ctx)
    _choice(cfg.gate.source, ("local", "gitlab", "jenkins"), ("gate", "source"), ctx)
    _choice(cfg.prod.fsck, ("changed", "full"), ("prod", "fsck"), ctx)
    _choice(cfg.prod.source, ("stage", "image"), ("prod", "source"), ctx)
    _choice(cfg.project.image_type, IMAGE_TYPES, ("project", "image_type"), ctx)
    _choice(cfg.image_mode.signing, ("gpg", "sigstore", "none"), ("image_mode", "signing"), ctx)
    _choice(cfg.image_mode.hadolint, HADOLINT_ORDER, ("image_mode", "hadolint"), ctx)
    for name, bp in cfg.blueprints.items():
        if bp.image_type:
            _choice(bp.image_type, IMAGE_TYPES, ("blueprints", name, "image_type"), ctx)
    if cfg.stage.mode == "wait" and not cfg.stage.url:
        raise ConfigError("stage.mode is 'wait' but stage.url is empty", where=ctx.where(("stage", "mode")),
                          fix="set stage.url to the stage host's repo URL, e.g. http://stage:8080/repo")
    for key in ("port", "container_port"):
        if getattr(cfg.stage, key) > 65535:
            raise ConfigError(f"port {getattr(cfg.stage, key)} is out of range", where=ctx.where(("stage", key)),
                              fix="use a port from 1 to 65535 (stage.port 0: any free port)")
    name = cfg.stage.container_name
    plain = name.replace("{blueprint}", "x")
    if not CONTAINER_NAME_RE.match(plain) or len(plain) > 200:
        raise ConfigError(f"{name!r} is not a container name podman and systemd accept", where=ctx.where(
            ("stage", "container_name")), fix="use letters, digits, '_', '.' and '-' (first a letter or digit), "
                                              "and {blueprint} for the blueprint's name")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in cfg.stage.host_authfile):
        raise ConfigError("the path contains a control character", where=ctx.where(("stage", "host_authfile")))
    _choice(cfg.project.arch, ARCHES, ("project", "arch"), ctx)
    for name, bp in cfg.blueprints.items():
        if not valid_name(name):
            raise ConfigError(f"{name!r} is not a blueprint name", where=ctx.where(("blueprints", name)),
                              fix="blueprint names use letters, digits, '.', '_' and '-' only")
        for i, arch in enumerate(bp.arch):
            _choice(arch, ARCHES, ("blueprints", name, "arch", str(i)), ctx)


# -- security settings: raised from the environment or the command line, never lowered ----------------------

def _ids(values: list[str]) -> set[str]:
    return {v.strip().casefold() for v in values}


def _narrower(file_value: list[str], new_value: list[str]) -> bool:
    """An allow-list (empty = anything) that admits no more than the file's."""
    return not file_value or (bool(new_value) and _ids(new_value) <= _ids(file_value))


def _lowered(file_cfg: Config, cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """(key path, how) for every security setting the environment or command line made weaker than the file
    (or the defaults, without a file)."""
    out: list[tuple[tuple[str, ...], str]] = []
    fg, g = file_cfg.gate, cfg.gate
    if g.approvals_required < fg.approvals_required:
        out.append((("gate", "approvals_required"), f"{fg.approvals_required} -> {g.approvals_required} approvals"))
    if fg.source != "local" and g.source == "local":
        out.append((("gate", "source"), f"{fg.source} -> local approvals"))
    if not fg.allow_fork and g.allow_fork:
        out.append((("gate", "allow_fork"), "false -> true"))
    restricted = bool(fg.allowed_users or fg.allowed_groups)
    if restricted:
        if not (g.allowed_users or g.allowed_groups):
            out.append((("gate", "allowed_users"), "emptied: anyone but the authors could approve"))
        else:
            if g.allowed_users and not (fg.allowed_users and _ids(g.allowed_users) <= _ids(fg.allowed_users)):
                out.append((("gate", "allowed_users"), "admits users the file does not"))
            if g.allowed_groups and not (fg.allowed_groups and _ids(g.allowed_groups) <= _ids(fg.allowed_groups)):
                out.append((("gate", "allowed_groups"), "admits groups the file does not"))
    if not _narrower(fg.windows, g.windows):
        out.append((("gate", "windows"), "widens or removes the change windows"))
    if not _ids(fg.freeze) <= _ids(g.freeze):
        out.append((("gate", "freeze"), "removes a freeze"))
    # Settings other parts of the gate may add: a required set may only grow, an accepted set only shrink.
    for key in ("required_scenarios",):
        fv, v = list(getattr(fg, key, []) or []), list(getattr(g, key, []) or [])
        if fv != v and not (fv and _ids(fv) <= _ids(v)):
            out.append((("gate", key), "requires less than the file"))
    for key in ("accepted_backends",):
        fv, v = list(getattr(fg, key, []) or []), list(getattr(g, key, []) or [])
        if fv != v and not (fv and v and _ids(v) <= _ids(fv)):
            out.append((("gate", key), "accepts more than the file"))
    fp, p = file_cfg.prod, cfg.prod
    for key in ("gpg_key", "sign_ed25519_key"):
        before, after = getattr(fp, key), getattr(p, key)
        if before and after != before:
            out.append((("prod", key), "emptied: production would be unsigned" if not after
                        else "replaced by another key"))
    if fp.gpg_key and p.gpg_homedir != fp.gpg_homedir:
        out.append((("prod", "gpg_homedir"), "another keyring for the production key"))
    out += _image_mode_lowered(file_cfg.image_mode, cfg.image_mode)
    return out


HADOLINT_ORDER = ("off", "auto", "required")


def _image_mode_lowered(fi: ImageModeConfig, i: ImageModeConfig) -> list[tuple[tuple[str, ...], str]]:
    """image_mode's security settings: signing, its keys, the allowed base tags and hadolint."""
    out: list[tuple[tuple[str, ...], str]] = []
    if fi.signing != "none" and i.signing != fi.signing:
        out.append((("image_mode", "signing"), f"{fi.signing} -> {i.signing}"))
    for key in ("gpg_key", "gpg_public_key", "sigstore_key", "sigstore_public_key"):
        before, after = getattr(fi, key), getattr(i, key)
        if before and after != before:
            out.append((("image_mode", key), "emptied: images would be unsigned" if not after
                        else "replaced by another key"))
    if fi.gpg_key and i.gpg_homedir != fi.gpg_homedir:
        out.append((("image_mode", "gpg_homedir"), "another keyring for the image signing key"))
    if not set(i.allowed_base_tags) <= set(fi.allowed_base_tags):
        out.append((("image_mode", "allowed_base_tags"), "allows base tags the file does not"))
    if fi.base != i.base:
        out.append((("image_mode", "base"), f"another base image ({fi.base or 'the Containerfile'} -> "
                                            f"{i.base or 'the Containerfile'})"))
    rank = {m: n for n, m in enumerate(HADOLINT_ORDER)}
    if rank.get(i.hadolint, 0) < rank.get(fi.hadolint, 0):
        out.append((("image_mode", "hadolint"), f"{fi.hadolint} -> {i.hadolint}"))
    return out


def _security_floor(file_cfg: Config, cfg: Config, ctx: _Ctx) -> None:
    lowered = _lowered(file_cfg, cfg)
    if not lowered:
        return
    path, how = lowered[0]
    twin = {"allowed_users": "allowed_groups", "allowed_groups": "allowed_users"}.get(path[-1])
    if path not in ctx.origins and twin and (path[0], twin) in ctx.origins:
        path = (path[0], twin)
    where = "edgeci.yaml" if ctx.source == "(embedded default)" else Path(ctx.source).name
    raise ConfigError(f"cannot be lowered from the environment or the command line ({how})", where=ctx.where(path),
                      fix=f"remove the override: {'.'.join(path)} can only be changed in {where} (or the "
                          "production host's trust policy)")
