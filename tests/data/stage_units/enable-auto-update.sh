#!/bin/sh
# Install container-edge-stage.service and enable podman auto-update on the stage host (run as root).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
install -m 0644 "$here/container-edge-stage.service" /etc/systemd/system/container-edge-stage.service
systemctl daemon-reload
systemctl enable --now container-edge-stage.service
# checks the registry daily by default; `systemctl edit podman-auto-update.timer` to change
systemctl enable --now podman-auto-update.timer
