"""Typed wrappers over skopeo (copy, inspect, list-tags, delete), every call through edgeci.tools.run.

Credentials never reach a command line: user/password pairs are written to a temporary authfile
(mode 0600 in a private directory, deleted afterwards) and the password is registered for masking.
skopeo's own --retry-times does not retry an HTTP 5xx (a registry or proxy answering 500), so
every call here is retried with backoff on 5xx, a bounded number of times. Failures become
RegistryError with one line: what, which registry, the fix.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.errors import ConfigError, RegistryError
from edgeci.tools.run import Completed, mask, register_secret, run

if TYPE_CHECKING:
    from edgeci.config import Config

DEFAULT_TIMEOUT = 3600.0
DEFAULT_5XX_ATTEMPTS = 4
DEFAULT_BACKOFF = 1.0


@dataclass(frozen=True)
class Creds:
    """A registry user and password; turned into a temporary authfile, never an argument."""

    user: str
    password: str

    def __post_init__(self) -> None:
        register_secret(self.password)
        register_secret(self.basic)

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def __repr__(self) -> str:  # never print the password by accident
        return f"Creds(user={self.user!r}, password='***')"


@dataclass(frozen=True)
class Access:
    """How to reach a registry: TLS verification, an authfile or credentials, retries."""

    tls_verify: bool | None = None
    authfile: str | None = None
    creds: Creds | None = None
    retry_times: int | None = None
    backoff: float = DEFAULT_BACKOFF

    @property
    def attempts(self) -> int:
        return (self.retry_times or 0) + 1

    @classmethod
    def from_config(cls, cfg: Config) -> Access:
        """registry.* from the config; credentials from EDGECI_REGISTRY_USER / EDGECI_REGISTRY_PASSWORD."""
        password = cfg.secret("REGISTRY_PASSWORD")
        user = os.environ.get("EDGECI_REGISTRY_USER", "")
        if bool(user) != bool(password):
            missing = "EDGECI_REGISTRY_PASSWORD" if user else "EDGECI_REGISTRY_USER"
            raise ConfigError(f"{missing} is not set but its partner is", where="environment",
                              fix="set both EDGECI_REGISTRY_USER and EDGECI_REGISTRY_PASSWORD, or neither")
        authfile = str(cfg.path(cfg.registry.authfile)) if cfg.registry.authfile else None
        if authfile and not os.path.isfile(authfile):
            raise ConfigError("registry authfile not found", where=f"registry.authfile: {authfile}",
                              fix="create it with 'skopeo login --authfile FILE HOST' or unset registry.authfile")
        return cls(
            tls_verify=cfg.registry.tls_verify,
            authfile=authfile,
            creds=Creds(user, password) if user else None,
            retry_times=max(0, cfg.registry.retry_times),
            backoff=max(0.0, cfg.registry.retry_backoff),
        )

    def kw(self) -> dict[str, Any]:
        """Keyword arguments for inspect / list_tags / delete."""
        return {"tls_verify": self.tls_verify, "authfile": self.authfile, "creds": self.creds,
                "retry_times": self.retry_times, "attempts": self.attempts, "backoff": self.backoff}


# -- image references ------------------------------------------------------------------------------

def registry_of(image: str) -> str:
    """The registry host[:port] of a docker:// reference, or the transport and path for others."""
    if image.startswith("docker://"):
        return image[len("docker://"):].split("/", 1)[0]
    return image.split("@", 1)[0]


def repository_of(image: str) -> str:
    """docker://HOST/REPO[:TAG|@DIGEST] → HOST/REPO."""
    rest = image[len("docker://"):] if image.startswith("docker://") else image
    rest = rest.split("@", 1)[0]
    host, _, path = rest.partition("/")
    if ":" in path.rsplit("/", 1)[-1]:
        path = path.rsplit(":", 1)[0]
    return f"{host}/{path}" if path else host


@contextlib.contextmanager
def temp_authfile(image: str, creds: Creds) -> Iterator[str]:
    """An authfile for the registry of `image` holding `creds`, removed when the block ends."""
    d = tempfile.mkdtemp(prefix="edgeci-auth-")  # mkdtemp: mode 0700
    path = os.path.join(d, "auth.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {registry_of(image): {"auth": creds.basic}}}, f)
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- error mapping ---------------------------------------------------------------------------------

_5XX = re.compile(r"\b(5\d\d)\b\s*\(?(Internal Server Error|Not Implemented|Bad Gateway|Service Unavailable|"
                  r"Gateway Timeout|HTTP Version Not Supported|Insufficient Storage)")
_5XX_LOOSE = re.compile(r"(?:status code from registry|HTTP status:|status code:?|StatusCode:?)\s*(5\d\d)\b")


def status_5xx(stderr: str) -> str | None:
    """'500 Internal Server Error' when skopeo's error names a 5xx answer, else None."""
    m = _5XX.search(stderr)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    m = _5XX_LOOSE.search(stderr)
    return m.group(1) if m else None


def _last_message(stderr: str) -> str:
    """skopeo's fatal message without the logrus decoration, or the last line."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
        if m:
            return m.group(1).replace('\\"', '"')
    return lines[-1] if lines else "no error output"


def classify(stderr: str, image: str, *, had_creds: bool, attempts: int = 1) -> RegistryError:
    """Turn skopeo's stderr into one RegistryError line naming the registry and the fix."""
    reg = registry_of(image)
    text = stderr.lower()
    msg = mask(_last_message(stderr))
    if "unauthorized" in text or "authentication required" in text or "invalid username/password" in text:
        if had_creds:
            return RegistryError(f"wrong credentials for {reg}", where=image,
                                 fix="check EDGECI_REGISTRY_USER and EDGECI_REGISTRY_PASSWORD (or registry.authfile)")
        return RegistryError(f"registry {reg} requires credentials", where=image,
                             fix="set EDGECI_REGISTRY_USER and EDGECI_REGISTRY_PASSWORD, or registry.authfile")
    if "requested access to the resource is denied" in text or re.search(r"\bdenied: ", text):
        return RegistryError(f"access denied to {repository_of(image)}", where=image,
                             fix="give this user push/pull rights on the repository")
    if "connection refused" in text or "no such host" in text or "i/o timeout" in text \
            or "network is unreachable" in text or "no route to host" in text \
            or "connection reset" in text:
        return RegistryError(f"registry {reg} unreachable", where=image,
                             fix="check that the registry runs and the host:port in registry.image")
    if "server gave http response to https client" in text:
        return RegistryError(f"registry {reg} speaks plain HTTP", where=image,
                             fix="set registry.tls_verify: false for a plain-HTTP registry")
    if "x509" in text or "certificate" in text:
        return RegistryError(f"TLS certificate of {reg} not trusted", where=image,
                             fix="install the registry's CA, or set registry.tls_verify: false")
    if "manifest unknown" in text:
        return RegistryError(f"no such image (manifest unknown) in {repository_of(image)}", where=image,
                             fix="push it first (edgeci push), or check the tag or digest")
    if "name unknown" in text or "repository name not known" in text:
        return RegistryError(f"repository {repository_of(image)} unknown to {reg}", where=image,
                             fix="push to it first, or check registry.image")
    status = status_5xx(stderr)
    if status:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return RegistryError(f"registry {reg} answered HTTP {status}{tries}", where=image,
                             fix="the registry has a server-side problem: check its logs, then retry")
    return RegistryError(f"skopeo failed: {msg}", where=image)


# -- calls -----------------------------------------------------------------------------------------

Sleep = Callable[[float], None]


def _tls(flag: str, verify: bool | None) -> list[str]:
    return [] if verify is None else [f"--{flag}={'true' if verify else 'false'}"]


ErrorHook = Callable[[str, str, bool], "RegistryError | None"]


def _call(
    argv: list[str],
    image: str,
    *,
    had_creds: bool,
    timeout: float | None,
    attempts: int,
    backoff: float,
    sleep: Sleep,
    env: Mapping[str, str] | None = None,
    on_error: ErrorHook | None = None,
) -> Completed:
    """Run skopeo, retrying (bounded, exponential backoff) while the registry answers 5xx. `on_error(stderr,
    image, had_creds)` may turn a failure into its own RegistryError first (None: the usual classification)."""
    attempt = 0
    delay = backoff
    while True:
        attempt += 1
        r = run(argv, timeout=timeout, check=False, env=dict(env) if env else None)
        if r.ok:
            return r
        if status_5xx(r.stderr) and attempt < max(1, attempts):
            sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        own = on_error(r.stderr, image, had_creds) if on_error is not None else None
        raise own or classify(r.stderr, image, had_creds=had_creds, attempts=attempt)


@contextlib.contextmanager
def _auth(image: str, authfile: str | None, creds: Creds | None) -> Iterator[str | None]:
    if creds is not None:
        with temp_authfile(image, creds) as path:
            yield path
    else:
        yield authfile or None


def copy(
    src: str,
    dest: str,
    *,
    digestfile: str | os.PathLike[str] | None = None,
    retry_times: int | None = None,
    src_tls_verify: bool | None = None,
    dest_tls_verify: bool | None = None,
    authfile: str | None = None,
    src_creds: Creds | None = None,
    dest_creds: Creds | None = None,
    src_authfile: str | None = None,
    dest_authfile: str | None = None,
    preserve_digests: bool = False,
    extra: Sequence[str] = (),
    global_options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    on_error: ErrorHook | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_5XX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> str | None:
    """skopeo [GLOBAL_OPTIONS] copy SRC DEST; returns the manifest digest written to `digestfile` (when given).

    `authfile` serves both sides, `src_authfile`/`dest_authfile` one side each (credentials win over both);
    `global_options` go before `copy` (--registries.d, --policy); `env` is added to skopeo's environment
    (GNUPGHOME for signing); `on_error` may classify a failure itself (see _call)."""
    # Which side talks to a registry decides which reference names the error.
    image = dest if dest.startswith("docker://") or not src.startswith("docker://") else src
    with _auth(src, src_authfile or authfile, src_creds) as src_auth, \
            _auth(dest, dest_authfile or authfile, dest_creds) as dest_auth:
        argv = ["skopeo", *global_options, "copy"]
        if retry_times is not None:
            argv.append(f"--retry-times={retry_times}")
        argv += _tls("src-tls-verify", src_tls_verify) if src.startswith("docker://") else []
        argv += _tls("dest-tls-verify", dest_tls_verify) if dest.startswith("docker://") else []
        if src_auth and src.startswith("docker://"):
            argv.append(f"--src-authfile={src_auth}")
        if dest_auth and dest.startswith("docker://"):
            argv.append(f"--dest-authfile={dest_auth}")
        if digestfile is not None:
            argv.append(f"--digestfile={os.fspath(digestfile)}")
        if preserve_digests:
            argv.append("--preserve-digests")
        argv += [*extra, src, dest]
        _call(argv, image, had_creds=bool(src_auth or dest_auth), timeout=timeout, attempts=attempts,
              backoff=backoff, sleep=sleep, env=env, on_error=on_error)
    if digestfile is None:
        return None
    digest = Path(digestfile).read_text().strip()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise RegistryError(f"skopeo wrote no manifest digest (got {digest[:80]!r})", where=dest)
    return digest


def _query(
    sub: str,
    image: str,
    flags: list[str],
    *,
    tls_verify: bool | None,
    authfile: str | None,
    creds: Creds | None,
    retry_times: int | None,
    timeout: float | None,
    attempts: int,
    backoff: float,
    sleep: Sleep,
) -> Completed:
    with _auth(image, authfile, creds) as auth:
        argv = ["skopeo", sub]
        if retry_times is not None:
            argv.append(f"--retry-times={retry_times}")
        if image.startswith("docker://"):
            argv += _tls("tls-verify", tls_verify)
            if auth:
                argv.append(f"--authfile={auth}")
        argv += [*flags, image]
        return _call(argv, image, had_creds=bool(auth), timeout=timeout, attempts=attempts, backoff=backoff,
                     sleep=sleep)


def inspect(
    image: str,
    *,
    raw: bool = False,
    config: bool = False,
    tls_verify: bool | None = None,
    authfile: str | None = None,
    creds: Creds | None = None,
    retry_times: int | None = None,
    timeout: float | None = 300,
    attempts: int = DEFAULT_5XX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> dict[str, Any]:
    """skopeo inspect: the summary (default), the raw manifest (raw=True) or the image config
    (config=True, with raw=True the config blob as stored), parsed from JSON.

    For raw=True the exact bytes are kept under the key "_raw" (to hash them against a digest).
    """
    flags = (["--raw"] if raw else []) + (["--config"] if config else [])
    r = _query("inspect", image, flags, tls_verify=tls_verify, authfile=authfile, creds=creds,
               retry_times=retry_times, timeout=timeout, attempts=attempts, backoff=backoff, sleep=sleep)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RegistryError(f"skopeo inspect printed no JSON: {r.stdout[:80]!r}", where=image) from None
    if not isinstance(data, dict):
        raise RegistryError("skopeo inspect printed no JSON object", where=image)
    if raw:
        data["_raw"] = r.stdout
    return data


def list_tags(
    repo: str,
    *,
    tls_verify: bool | None = None,
    authfile: str | None = None,
    creds: Creds | None = None,
    retry_times: int | None = None,
    timeout: float | None = 300,
    attempts: int = DEFAULT_5XX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> list[str]:
    """Tags of docker://HOST/REPO (or an oci:DIR layout)."""
    r = _query("list-tags", repo, [], tls_verify=tls_verify, authfile=authfile, creds=creds,
               retry_times=retry_times, timeout=timeout, attempts=attempts, backoff=backoff, sleep=sleep)
    try:
        tags = json.loads(r.stdout).get("Tags") or []
    except (json.JSONDecodeError, AttributeError):
        raise RegistryError(f"skopeo list-tags printed no JSON: {r.stdout[:80]!r}", where=repo) from None
    return [str(t) for t in tags]


def delete(
    image: str,
    *,
    tls_verify: bool | None = None,
    authfile: str | None = None,
    creds: Creds | None = None,
    retry_times: int | None = None,
    timeout: float | None = 300,
    attempts: int = DEFAULT_5XX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> None:
    """Delete an image (by tag or digest) from a registry with deletion enabled."""
    _query("delete", image, [], tls_verify=tls_verify, authfile=authfile, creds=creds, retry_times=retry_times,
           timeout=timeout, attempts=attempts, backoff=backoff, sleep=sleep)
