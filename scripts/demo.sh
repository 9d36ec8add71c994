#!/usr/bin/env bash
# `make demo`: two releases of the gateway blueprint, end to end, on this machine alone (the embedded
# default: local composer building the Debian device OS, OCI directory, stage served on 127.0.0.1, the boot
# test on a real device in qemu, local approvals, production repo under build/). 1.0.0 is the first release;
# 1.0.1 adds a package and ships as an update the device pulls through a static delta.
# The demo works in its own git repository (build/demo) so your blueprints/ stay untouched.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${EDGECI_DEMO_DIR:-$ROOT/build/demo}
edgeci() { "$PYTHON" -m edgeci "$@"; }

# Stop a stage server left by an earlier, interrupted demo before wiping its files.
if [ -d "$WORK/build" ]; then
  (cd "$WORK" && edgeci stage stop gateway >/dev/null 2>&1) || true
fi
rm -rf "$WORK"
mkdir -p "$WORK/blueprints"
cp "$ROOT/blueprints/gateway.toml" "$ROOT/blueprints/gateway.checks.yaml" "$WORK/blueprints/"
cd "$WORK"
git init -q -b main
git config user.name "Dana Developer"
git config user.email "dana@example.com"
git add -A
git commit -qm "gateway 1.0.0"

release() {
  local version=$1
  echo
  echo "######## gateway $version: build, stage, boot-test (stops at the gate)"
  rc=0; edgeci run gateway || rc=$?
  if [ "$rc" -ne 1 ]; then echo "demo: expected the pipeline to stop at the gate (exit 1), got $rc" >&2; exit 1; fi
  echo
  echo "######## gateway $version: Alex approves the tested commit, the pipeline resumes and promotes"
  edgeci approve gateway --as alex --comment "boot test looks good"
  edgeci run gateway --resume
}

release 1.0.0

# The second release: a version bump, a new package and a changed file, as a developer would push it.
sed -i 's/^version = "1.0.0"/version = "1.0.1"/' blueprints/gateway.toml
cat >> blueprints/gateway.toml <<'TOML'

[[packages]]
name = "jq"
version = "*"

[[customizations.files]]
path = "/etc/motd"
data = "gateway 1.0.1: managed by edgeci\n"
TOML
git commit -qam "gateway 1.0.1: jq, and a motd"
release 1.0.1

echo
edgeci history gateway
echo
echo "######## every release's signed evidence, checked the way an auditor would, without CI"
for checksum in $("$PYTHON" -c 'import json,sys; print(" ".join(r["checksum"] for r in json.load(open(sys.argv[1]))["releases"]))' build/prod/repo/releases.json); do
  edgeci verify "$checksum"
done
edgeci report gateway
echo
echo "Report: $WORK/reports/report-gateway-x86_64.html"
