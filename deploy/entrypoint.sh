#!/bin/sh
# Container entrypoint: create the peer's identity on first start (the home is a volume, so the key
# survives restarts and image upgrades), then run the daemon. Every option comes from FIUN_<OPTION>
# environment variables (or HOME/config.toml, or flags appended to the container command).
# A key and an admin token kept in Secrets: FIUN_IDENTITY_KEY_FILE (the raw 32-byte seed) and
# FIUN_ADMIN_TOKEN_FILE name mounted files; a file that is absent means "generate one".
set -eu
HOME_DIR="${FIUN_HOME:-/data}"
KEY_FILE="${FIUN_IDENTITY_KEY_FILE:-}"
TOKEN_FILE="${FIUN_ADMIN_TOKEN_FILE:-}"
[ -n "$KEY_FILE" ] && [ ! -f "$KEY_FILE" ] && KEY_FILE=""
[ -n "$TOKEN_FILE" ] && [ ! -f "$TOKEN_FILE" ] && TOKEN_FILE=""
if [ ! -f "$HOME_DIR/identity.key" ]; then
    fiun-peer init --home "$HOME_DIR" --name "${FIUN_NAME:-$(hostname)}" \
        ${KEY_FILE:+--identity-key "$KEY_FILE"} ${TOKEN_FILE:+--admin-token "$TOKEN_FILE"}
elif [ -n "$KEY_FILE" ] && ! cmp -s "$KEY_FILE" "$HOME_DIR/identity.key"; then
    # The key in the home is the peer (it owns its models); a different one would be a new peer.
    echo "fiun-entrypoint: $KEY_FILE differs from $HOME_DIR/identity.key; the home's key is this peer's" \
         "identity: restore the matching Secret, or start from an empty home" >&2
    exit 2
fi
if [ -n "$TOKEN_FILE" ] && ! cmp -s "$TOKEN_FILE" "$HOME_DIR/admin.token"; then
    # A rotated token Secret takes effect at the next start (born 0600, replaced atomically).
    (umask 077 && cp "$TOKEN_FILE" "$HOME_DIR/.admin.token.new" && mv "$HOME_DIR/.admin.token.new" "$HOME_DIR/admin.token")
fi
exec fiun-peer run --home "$HOME_DIR" "$@"
