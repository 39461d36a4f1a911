#!/usr/bin/env bash
# Runs the whole test suite (library and demo) against real nats-servers,
# installing nats-server 2.15.1 if it is missing and the interop peers' pinned
# dependencies (interop/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-nats-server.sh
source scripts/ensure-peers.sh
cargo test --workspace --all-features
