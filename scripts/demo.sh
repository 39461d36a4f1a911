#!/usr/bin/env bash
# Runs the demo: an order system and a task queue, each service its own process,
# traced across processes. Starts its own nats-server unless NATS_URL is set and
# shows the traces in the terminal unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
# Extra arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-nats-server.sh
cargo run --quiet -p nats-otel-demo -- "$@"
