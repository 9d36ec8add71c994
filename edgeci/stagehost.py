"""The stage host: what it serves (fetch_ref, wait_for_commit) and how it is set up (podman run line,
systemd unit, auto-update script) as the runbook does by hand.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edgeci.errors import StageError, StageMismatch
from edgeci.wait import Waiting, WaitTimeout

if TYPE_CHECKING:
    from edgeci.config import Config


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def ref_url(base: str, ref: str) -> str:
    return f"{base.rstrip('/')}/refs/heads/{ref}"


def fetch_ref(base: str, ref: str, *, timeout: float = 10.0) -> str | None:
    """The checksum BASE/refs/heads/REF serves; None when it answers 404.

    Unreachable or other HTTP errors raise StageError naming the URL.
    """
    url = ref_url(base, ref)
    try:
        with _opener(url).open(url, timeout=timeout) as resp:
            body = resp.read(4096).decode("ascii", errors="replace").strip()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise StageError(f"stage answered HTTP {e.code} {e.reason}", where=url,
                         fix="check the stage server's log") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        reason = getattr(reason, "strerror", None) or str(reason)
        raise StageError(f"stage unreachable: {reason}", where=url,
                         fix="check that the stage server runs and stage.url") from None
    return body


def wait_for_commit(
    base: str,
    ref: str,
    expected: str,
    *,
    deadline: float,
    interval: float = 5.0,
    backoff: float = 1.5,
    max_interval: float = 60.0,
    progress: Callable[[str, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll BASE/refs/heads/REF until it serves `expected`; StageMismatch (naming both) at the deadline.

    A stage that was never reachable is an infrastructure error (StageError), not a mismatch.
    """
    served: dict[str, str | None] = {"last": None}
    reached = {"ever": False}
    url = ref_url(base, ref)

    def check() -> tuple[str, str | None]:
        try:
            value = fetch_ref(base, ref, timeout=min(30.0, max(1.0, interval * 2)))
        except StageError as e:  # a stage host restarting its container: not yet, until the deadline
            return e.message, None
        reached["ever"] = True
        served["last"] = value
        if value == expected:
            return f"serves {expected}", value
        if value is None:
            return f"no ref {ref} yet", None
        return f"serves {value}", None

    waiting: Waiting[str] = Waiting(deadline=deadline, interval=interval, backoff=backoff,
                                    max_interval=max_interval, progress=progress, sleep=sleep, clock=clock)
    try:
        return waiting.wait(check, what=f"{url} to serve {expected}")
    except WaitTimeout as e:
        if not reached["ever"]:
            raise StageError(f"{e.last_state} (gave up after {deadline:g} s)", where=url,
                             fix="check that the stage host runs the edge-container and stage.url") from None
        last = served["last"]
        raise StageMismatch(
            f"after {deadline:g} s the stage serves {last or 'no commit'}, expected {expected}",
            where=url,
            fix="check podman auto-update on the stage host (journalctl -u podman-auto-update), "
                "or raise stage.wait_deadline",
        ) from None


def units_image(cfg: Config, name: str, push: Mapping[str, Any] | None) -> str:
    """HOST/REPO:TAG the stage host runs: the pushed repository with its moving tag ('latest').

    podman auto-update follows a tag, so the unit names the image by tag, not by digest.
    """
    from edgeci.errors import ConfigError

    if push:
        dest = str(push.get("destination") or "")
        tags = [str(t) for t in push.get("tags") or []]
    else:
        dest = cfg.registry.image.format(blueprint=name)
        tags = ["latest"]
    if not dest.startswith("docker://"):
        raise ConfigError(f"the stage host pulls from a registry, but the image goes to '{dest}'",
                          where="registry.image",
                          fix="set registry.image to docker://HOST/REPO (podman auto-update needs a registry)")
    tag = "latest" if "latest" in tags or not tags else tags[0]
    return f"{dest[len('docker://'):]}:{tag}"


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
CONTAINER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # podman's rule for --name
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")  # HOST[:PORT]/REPO[:TAG]


def _no_control(value: str, key: str) -> None:
    from edgeci.errors import ConfigError

    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(f"{value!r} contains a control character (a newline would start a new line in the "
                          "generated unit and script)", where=key, fix="remove it")


def systemd_quote(value: str) -> str:
    """One word of an Exec*= line as systemd reads it: specifiers (%) and variables ($) doubled, and the word in
    double quotes (with \\ and \" escaped) unless it is plain."""
    if _SYSTEMD_PLAIN.match(value):
        return value.replace("%", "%%")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_units(cfg: Config, name: str, image: str) -> dict[str, str]:
    """The stage host's files: podman-run.sh, container-NAME.service, enable-auto-update.sh, README.md.

    The unit is what `podman generate systemd --new --name NAME` prints for the run line (podman 4).
    Every value from the configuration is checked (container name, image reference, paths: no control
    characters) and quoted for where it lands (sh or systemd).
    """
    from edgeci.config import valid_name
    from edgeci.errors import ConfigError

    if not valid_name(name):
        raise ConfigError(f"{name!r} is not a blueprint name", where="BLUEPRINT",
                          fix="blueprint names use letters, digits, '.', '_' and '-' only")
    container = cfg.stage.container_name.replace("{blueprint}", name)
    if not CONTAINER_NAME_RE.match(container) or len(container) > 200:
        raise ConfigError(f"{container!r} is not a container name podman and systemd accept",
                          where="stage.container_name",
                          fix="use letters, digits, '_', '.' and '-' (first a letter or digit)")
    if not IMAGE_RE.match(image):
        raise ConfigError(f"{image!r} is not an image reference", where="registry.image",
                          fix="use docker://HOST[:PORT]/REPO")
    _no_control(cfg.stage.host_authfile, "stage.host_authfile")
    cport = cfg.stage.container_port
    hport = urllib.parse.urlsplit(cfg.stage.url).port if cfg.stage.url else None
    publish = f"{hport or cport}:{cport}"
    unit = f"container-{container}.service"
    authfile = cfg.stage.host_authfile
    run_opts = ["-d", "--name", container, "--label", "io.containers.autoupdate=registry"]
    if authfile:
        run_opts += ["--label", f"io.containers.autoupdate.authfile={authfile}", "--authfile", authfile]
    if not cfg.registry.tls_verify:
        run_opts.append("--tls-verify=false")
    run_opts += ["-p", publish]
    run_line = "podman run " + " ".join(_shell_quote(o) for o in [*run_opts, image])

    unit_run = [o for o in run_opts if o != "-d"]
    pairs: list[str] = []
    i = 0
    while i < len(unit_run):  # podman prints one option per line, values on the option's line
        opt = unit_run[i]
        if opt in ("--name", "--label", "--authfile", "-p") and i + 1 < len(unit_run):
            pairs.append(f"{opt} {systemd_quote(unit_run[i + 1])}")
            i += 2
        else:
            pairs.append(opt)
            i += 1
    exec_start = ["--cidfile=%t/%n.ctr-id", "--cgroups=no-conmon", "--rm", "--sdnotify=conmon", "-d",
                  "--replace", *pairs[:-1], f"{pairs[-1]} {systemd_quote(image)}"]
    service = "\n".join([
        f"# {unit}",
        f"# generated by edgeci for blueprint {name}; equivalent to",
        f"# `podman generate systemd --new --name {container}` for the run line in podman-run.sh",
        "",
        "[Unit]",
        f"Description=Podman {unit}",
        "Documentation=man:podman-generate-systemd(1)",
        "Wants=network-online.target",
        "After=network-online.target",
        "RequiresMountsFor=%t/containers",
        "",
        "[Service]",
        "Environment=PODMAN_SYSTEMD_UNIT=%n",
        "Restart=on-failure",
        "TimeoutStopSec=70",
        "ExecStartPre=/bin/rm \\",
        "\t-f %t/%n.ctr-id",
        "ExecStart=/usr/bin/podman run \\",
        *[f"\t{o} \\" for o in exec_start[:-1]],
        f"\t{exec_start[-1]}",
        "ExecStop=/usr/bin/podman stop \\",
        "\t--ignore -t 10 \\",
        "\t--cidfile=%t/%n.ctr-id",
        "ExecStopPost=/usr/bin/podman rm \\",
        "\t-f \\",
        "\t--ignore -t 10 \\",
        "\t--cidfile=%t/%n.ctr-id",
        "Type=notify",
        "NotifyAccess=all",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])
    run_sh = "\n".join([
        "#!/bin/sh",
        f"# Run the stage container for blueprint {name} by hand (the systemd unit does the same).",
        "# io.containers.autoupdate=registry: podman auto-update pulls the tag again and restarts",
        "# the container whenever the registry's digest for it changes.",
        "set -eu",
        f"exec {run_line}",
        "",
    ])
    enable_sh = "\n".join([
        "#!/bin/sh",
        f"# Install {unit} and enable podman auto-update on the stage host (run as root).",
        "set -eu",
        'here="$(cd "$(dirname "$0")" && pwd)"',
        # the unit's name is a checked container name: nothing in it is special inside double quotes
        f'install -m 0644 "$here/{unit}" /etc/systemd/system/{_shell_quote(unit)}',
        "systemctl daemon-reload",
        f"systemctl enable --now {_shell_quote(unit)}",
        "# checks the registry daily by default; `systemctl edit podman-auto-update.timer` to change",
        "systemctl enable --now podman-auto-update.timer",
        "",
    ])
    host = image.split("/", 1)[0]
    notes = []
    if authfile:
        notes.append(f"- The registry needs credentials: `podman login --authfile {authfile} {host}` once on the "
                     "stage host (auto-update reads the same file through the label).")
    else:
        notes.append(f"- If {host} needs credentials, set stage.host_authfile and regenerate, then "
                     f"`podman login --authfile FILE {host}` on the stage host.")
    if not cfg.registry.tls_verify:
        notes.append(f"- {host} is plain HTTP: add `[[registry]] location=\"{host}\" insecure=true` to "
                     "/etc/containers/registries.conf so auto-update can reach it.")
    readme = "\n".join([
        f"# Stage host for blueprint {name}",
        "",
        f"The stage host runs the edge-container image `{image}` with podman and serves its ostree repo",
        f"on port {hport or cport} (`http://STAGE-HOST:{hport or cport}/repo`; set stage.url to it).",
        "podman auto-update replaces the container whenever `edgeci push` moves the tag.",
        "",
        "On the stage host, as root:",
        "",
        "    sh enable-auto-update.sh         # installs and starts the unit, enables podman-auto-update.timer",
        "    podman auto-update --dry-run     # shows whether the container would be updated",
        "",
        "In CI, after `edgeci push`:",
        "",
        f"    edgeci stage wait {name}",
        "",
        "Files:",
        "",
        "- podman-run.sh: the podman run line, for a manual start",
        f"- {unit}: the systemd unit (`podman generate systemd --new` equivalent)",
        "- enable-auto-update.sh: installs the unit and enables podman-auto-update.timer",
        "",
        "Notes:",
        "",
        *notes,
        "",
    ])
    return {"podman-run.sh": run_sh, unit: service, "enable-auto-update.sh": enable_sh, "README.md": readme}
