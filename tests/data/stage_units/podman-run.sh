#!/bin/sh
# Run the stage container for blueprint edge by hand (the systemd unit does the same).
# io.containers.autoupdate=registry: podman auto-update pulls the tag again and restarts
# the container whenever the registry's digest for it changes.
set -eu
exec podman run -d --name edge-stage --label io.containers.autoupdate=registry -p 8080:8080 quay.example.com/edge/edge:latest
