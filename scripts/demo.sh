#!/usr/bin/env bash
# Runs the quick-start examples: each starts its own nats-server (unless NATS_URL
# is set), sends messages between two traced services and prints the traces.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-nats-server.sh
cargo run --quiet --all-features --example pubsub
cargo run --quiet --all-features --example request_reply
