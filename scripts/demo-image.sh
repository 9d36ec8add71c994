#!/usr/bin/env bash
# `make demo-image`: two releases of the image-mode (bootc) example blueprints/gateway-bootc, end to end, on this
# machine alone: buildah builds on edgeci's local bootable base, a GPG-signed push to Debian's docker-registry on
# 127.0.0.1 (started here and stopped by its PID), the stage tag, the boot test on a sysroot device updated by
# edgeci's stand-in for bootc, the gate, an approval, promotion of the tested digest, and `edgeci verify`.
# 1.0.0 is the first release; 1.0.1 changes a config file and ships as the changed layer only.
# Works in its own git repository (build/demo-image) so your blueprints/ stay untouched.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${EDGECI_DEMO_IMAGE_DIR:-$ROOT/build/demo-image}
NAME=gateway-bootc
edgeci() { "$PYTHON" -m edgeci "$@"; }

rm -rf "$WORK"
mkdir -p "$WORK/blueprints" "$WORK/registry/storage"
cp -r "$ROOT/blueprints/$NAME" "$WORK/blueprints/"
cd "$WORK"

# A throwaway signing key for the images (GNUPGHOME short: gpg-agent's socket path is limited).
GNUPGHOME=$(mktemp -d /tmp/edgeci-demo-gpg.XXXXXX)
export GNUPGHOME
gpg --batch --passphrase '' --quick-gen-key "edgeci demo images <images@example.com>" ed25519 sign never 2>/dev/null
KEY=$(gpg --batch --with-colons --list-secret-keys | awk -F: '/^fpr:/ {print $10; exit}')

# docker-registry on 127.0.0.1 with basic auth, stopped by PID on exit.
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
htpasswd -Bbn demo "$PASSWORD" > "$WORK/registry/htpasswd"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $WORK/registry/storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$PORT}
auth:
  htpasswd: {realm: edgeci-demo, path: $WORK/registry/htpasswd}
YAML
docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry/log" 2>&1 &
REGISTRY_PID=$!
cleanup() { kill "$REGISTRY_PID" 2>/dev/null || true; gpgconf --kill gpg-agent 2>/dev/null || true; rm -rf "$GNUPGHOME"; }
trap cleanup EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
echo "docker-registry on 127.0.0.1:$PORT (pid $REGISTRY_PID)"
export EDGECI_REGISTRY_USER=demo EDGECI_REGISTRY_PASSWORD="$PASSWORD"

cat > edgeci.yaml <<YAML
registry:
  image: docker://127.0.0.1:$PORT/edge/{blueprint}
  tls_verify: false
image_mode:
  gpg_key: $KEY
  gpg_homedir: $GNUPGHOME
boot_test:
  backend: sysroot
YAML
git init -q -b main
git config user.name "Dana Developer"
git config user.email "dana@example.com"
git add -A
git commit -qm "$NAME 1.0.0"

release() {
  local version=$1
  echo
  echo "######## $NAME $version: build, push, stage, boot-test (stops at the gate)"
  rc=0; edgeci run "$NAME" || rc=$?
  if [ "$rc" -ne 1 ]; then echo "demo-image: expected the pipeline to stop at the gate (exit 1), got $rc" >&2; exit 1; fi
  echo
  echo "######## $NAME $version: Alex approves the tested digest, the pipeline resumes and promotes"
  edgeci approve "$NAME" --as alex --comment "boot test looks good"
  edgeci run "$NAME" --resume
}

release 1.0.0
sed -i 's/version=1.0.0/version=1.0.1/' "blueprints/$NAME/Containerfile"
echo "log = info" >> "blueprints/$NAME/gateway.conf"
git commit -qam "$NAME 1.0.1: log level"
release 1.0.1

DIGEST=$("$PYTHON" -c "import json; print(json.load(open('build/$NAME/x86_64/record.json'))['sections']['promote']['digest'])")
echo
echo "######## verify the promoted image's evidence chain"
edgeci verify "$DIGEST" --repo "build/prod/images/$NAME"
edgeci report "$NAME"
echo
echo "demo-image: done. Production: docker://127.0.0.1:$PORT/prod/$NAME:stable = $DIGEST"
