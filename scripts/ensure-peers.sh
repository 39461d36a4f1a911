# Sourced by test.sh: installs the interop peers' pinned dependencies and exports
# where the tests find them. Python: interop/python/requirements.txt into
# target/interop/python (pip --target, no virtualenv needed), run as
# `NATS_OTEL_PYTHON` with `NATS_OTEL_PYTHONPATH`.

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
