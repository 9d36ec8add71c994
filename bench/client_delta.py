"""Client update bytes through a static delta against a full pull: ~1 % of a 5,000-file tree changes.

Production is an archive repo with the delta edgeci promote generates (from the previous release);
the client is a bare-user repo (only those use deltas, docs/lab.md) pulling over HTTP on 127.0.0.1.
Bytes are counted at the server. Target: the update is at most 5 % of a full pull.

--tree-tar ROOTFS.tar: the workload is a real OS tree instead (e.g. the device OS's cached Debian root filesystem
under ~/.cache/edgeci/deviceos/), 1 % of its regular files under usr/ changed by a few bytes each.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from _util import result, serve

from edgeci.tools import ostree

FILES = 5000
CHANGED = 50  # 1 %
REF = "rhel/9/x86_64/edge"


def _tree(root: Path, rng: random.Random, words: list[str]) -> None:
    for i in range(FILES):
        p = root / "usr" / "share" / f"d{i % 50:02d}" / f"f{i:04d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(" ".join(rng.choice(words) for _ in range(rng.randint(200, 600))) + "\n")


def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree-tar", type=Path, default=None, help="a root filesystem tar as the workload")
    args = ap.parse_args(argv)
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(5000)]
    with tempfile.TemporaryDirectory(prefix="edgeci-bench-delta-") as tmp:
        t = Path(tmp)
        tree, prod = t / "tree", t / "prod"
        if args.tree_tar:
            from promote import base_from_tar

            paths = base_from_tar(tree, args.tree_tar)
            files, changed = len(paths), rng.sample(paths, max(1, len(paths) // 100))
        else:
            _tree(tree, rng, words)
            files = FILES
            changed = [tree / "usr" / "share" / f"d{i % 50:02d}" / f"f{i:04d}.txt"
                       for i in rng.sample(range(FILES), CHANGED)]
        ostree.init(prod, "archive")
        v1 = ostree.commit(prod, REF, tree_dir=tree, metadata={"version": "1.0.0"})
        for p in changed:
            if args.tree_tar:
                with p.open("ab") as f:
                    f.write(b"\n# edgeci bench change\n")
            else:
                p.write_text(p.read_text()[: -40] + " " + " ".join(rng.choice(words) for _ in range(30)) + "\n")
        v2 = ostree.commit(prod, REF, tree_dir=tree, metadata={"version": "1.0.1"})
        ostree.static_delta_generate(prod, v2, from_=v1)
        ostree.summary_update(prod)
        with serve(prod) as (url, sent):
            client = t / "client"
            ostree.init(client, "bare-user")
            ostree.remote_add(client, "prod", url)
            ostree.pull(client, "prod", [f"{REF}@{v1}"])
            before = sent[0]
            out = ostree.pull(client, "prod", [f"{REF}@{v2}"]).stdout
            update = sent[0] - before
            fresh = t / "fresh"
            ostree.init(fresh, "bare-user")
            ostree.remote_add(fresh, "prod", url)
            before = sent[0]
            ostree.pull(fresh, "prod", [f"{REF}@{v2}"], disable_static_deltas=True)
            full = sent[0] - before
        if "delta" not in out.lower():
            print(f"warning: the update pull did not report using a delta: {out.strip()[-200:]}")
    print(f"{files} files, {len(changed)} changed: update {update / 1024:.0f} KiB through the delta, "
          f"full pull {full / 1024:.0f} KiB")
    return result("client-update bytes (delta / full)", 100.0 * update / full, 5.0, "%")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
