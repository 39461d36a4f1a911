#!/usr/bin/env bash
# Runs the whole test suite (library and demo) against real nats-servers,
# installing nats-server 2.15.1 if it is missing, the interop peers' pinned
# dependencies (interop/) and Debian's chromium + chromium-driver for the demo's
# browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-nats-server.sh
source scripts/ensure-peers.sh
source scripts/ensure-browser.sh
cargo test --workspace --all-features
