"""The sysroot backend: a throwaway ostree sysroot, no VM — a fast pre-check that works anywhere.

Real `ostree admin` (init-fs, os-init, deploy, status) on a directory, always inside
`unshare --user --map-root-user` (edgeci.tools.ostree.admin_*: run as real root, deploy would FIFREEZE
the machine's root filesystem). boot() reads the default deployment instead of booting it, so only the
checks that need no running system are evaluated (against the deployed tree); the rest are reported
as skipped. Rollback reorders the deployments through libostree, as greenboot's fallback would.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from edgeci.boottest.guest import (
    INJECTED_CHECK_FILE,
    INJECTED_CHECK_SCRIPT,
    BootResult,
    DeployResult,
    Guest,
    RollbackResult,
    parse_pull_output,
)
from edgeci.errors import BootTestError
from edgeci.tools import ostree


def read_os_release(tree: Path) -> dict[str, str]:
    """KEY=value pairs of the tree's os-release (usr/lib/os-release, else etc/ or usr/etc/)."""
    for rel in ("usr/lib/os-release", "etc/os-release", "usr/etc/os-release"):
        p = tree / rel
        if p.is_symlink() and os.readlink(p).startswith("/"):
            p = tree / os.readlink(p).lstrip("/")
        if p.is_file():
            out = {}
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and key and not key.startswith("#"):
                    out[key] = value.strip().strip("'\"")
            return out
    return {}


def remove_tree(path: Path) -> None:
    """rm -rf that also copes with read-only directories left by a checkout."""

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
        except OSError:
            pass
        func(p)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=fix)
    elif path.exists() or path.is_symlink():
        path.unlink()


class SysrootGuest(Guest):
    backend = "sysroot"
    runs_system = False
    TOOLS: tuple[str, ...] = ("ostree", "unshare")

    @classmethod
    def for_scenario(cls, cfg: Any, work_dir: Path, *, osname: str, **_: Any) -> SysrootGuest:
        return cls(work_dir, osname)

    def __init__(self, work_dir: Path, osname: str) -> None:
        self.work_dir = Path(work_dir)
        self.osname = osname
        self.sysroot = self.work_dir / "sysroot"
        self._started = False

    @property
    def repo(self) -> Path:
        return self.sysroot / "ostree" / "repo"

    def start(self) -> None:
        if self.work_dir.exists():
            remove_tree(self.work_dir)  # a leftover from an interrupted run: throwaway by definition
        self.sysroot.mkdir(parents=True)
        self._started = True
        ostree.admin_init_fs(self.sysroot)
        ostree.admin_os_init(self.sysroot, self.osname)

    def deployments(self) -> list[ostree.Deployment]:
        return ostree.admin_deployments(self.sysroot)

    def deploy(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        ostree.remote_add(self.repo, remote, url)
        current = self.deployments()
        tracking = f"{remote}:{ref}"
        if current and ostree.rev_parse(self.repo, tracking) is None:
            # A device upgrades from what it runs: give the remote's ref that commit, so the pull looks
            # for the static delta FROM it (ostree picks the delta's "from" from the local ref).
            ostree.admin_set_ref(self.sysroot, tracking, current[0].checksum)
        refspec = f"{ref}@{commit}" if commit else ref
        r = ostree.admin_pull(self.sysroot, remote, refspec)
        stats = parse_pull_output(r.stdout + "\n" + r.stderr)
        pulled = ostree.rev_parse(self.repo, tracking)
        if pulled is None or (commit and pulled != commit):
            raise BootTestError(f"pulling {refspec} from {url} left '{tracking}' at {pulled or 'nothing'}",
                                where=url, fix="check that the repository serves that commit")
        ostree.admin_deploy(self.sysroot, self.osname, tracking)
        deployed = self.deployments()
        if not deployed or deployed[0].checksum != pulled:
            raise BootTestError(f"ostree admin deploy of {pulled} did not make it the default deployment",
                                where=str(self.sysroot))
        return DeployResult(pulled, stats)

    def _default_tree(self) -> tuple[ostree.Deployment, Path]:
        deployed = self.deployments()
        if not deployed:
            raise BootTestError("the sysroot has no deployment to boot", where=str(self.sysroot))
        return deployed[0], deployed[0].root(self.sysroot)

    def boot(self) -> BootResult:
        started = time.monotonic()
        dep, tree = self._default_tree()
        release = read_os_release(tree)
        return BootResult(commit=dep.checksum, version=release.get("VERSION"), status=None, running=False,
                          tree=tree, expected_commit=dep.checksum, entry="default deployment (not booted)",
                          seconds=time.monotonic() - started)

    def inject_failure(self) -> Path:
        """Write the always-failing required greenboot check into the default deployment's own /etc
        (per deployment and writable: the commit does not change)."""
        _, tree = self._default_tree()
        target = tree / "etc" / "greenboot" / "check" / "required.d" / INJECTED_CHECK_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(INJECTED_CHECK_SCRIPT, encoding="utf-8")
        target.chmod(0o755)
        return target

    def prove_rollback(self) -> RollbackResult:
        if len(self.deployments()) < 2:
            raise BootTestError("rollback needs two deployments (deploy production, then the candidate)",
                                where=str(self.sysroot))
        self.inject_failure()
        ostree.admin_set_default(self.sysroot, 1)
        return RollbackResult(
            candidate=None, previous=self.boot(),
            detail="sysroot backend: the injected check cannot run without a running system; the fallback "
                   "greenboot triggers was applied by reordering the deployments (libostree)")

    def stop(self) -> None:
        if self._started or self.work_dir.exists():
            remove_tree(self.work_dir)
        self._started = False
