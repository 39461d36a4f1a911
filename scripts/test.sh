#!/usr/bin/env bash
# Runs the whole test suite against real nats-servers (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-nats-server.sh
cargo test --all-features
