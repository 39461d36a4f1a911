# Sourced by test.sh: installs the interop peers' pinned dependencies and exports
# where the tests find them. Python: interop/python/requirements.txt into
# target/interop/python (pip --target, no virtualenv needed), run as
# `NATS_OTEL_PYTHON` with `NATS_OTEL_PYTHONPATH`; Node: interop/node/package-lock.json
# into interop/node/node_modules.

python_lib="$PWD/target/interop/python"
python_stamp="$python_lib/requirements.txt"
if ! cmp -s interop/python/requirements.txt "$python_stamp"; then
  echo "installing the Python interop peer's dependencies (interop/python/requirements.txt)" >&2
  rm -rf "$python_lib"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$python_lib" -r interop/python/requirements.txt >&2
  cp interop/python/requirements.txt "$python_stamp"
fi
export NATS_OTEL_PYTHON="${NATS_OTEL_PYTHON:-$(command -v python3)}"
export NATS_OTEL_PYTHONPATH="$python_lib"

# Node: interop/node/package-lock.json into interop/node/node_modules (`npm ci`).
node_stamp=interop/node/node_modules/.package-lock.stamp
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "warning: node/npm not found: the Node interop tests will fail (install Node.js 18+ with npm)" >&2
elif ! cmp -s interop/node/package-lock.json "$node_stamp"; then
  echo "installing the Node interop peer's dependencies (interop/node/package-lock.json)" >&2
  npm ci --prefix interop/node --no-audit --no-fund --loglevel=error >&2
  cp interop/node/package-lock.json "$node_stamp"
fi
