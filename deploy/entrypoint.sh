#!/bin/sh
# Container entrypoint: create the peer's identity on first start (the home is a volume, so the key
# survives restarts and image upgrades), then run the daemon. Every option comes from FIUN_<OPTION>
# environment variables (or HOME/config.toml, or flags appended to the container command).
set -eu
HOME_DIR="${FIUN_HOME:-/data}"
if [ ! -f "$HOME_DIR/identity.key" ]; then
    fiun-peer init --home "$HOME_DIR" --name "${FIUN_NAME:-$(hostname)}"
fi
exec fiun-peer run --home "$HOME_DIR" "$@"
