#!/usr/bin/env bash
# Runs every test of model-feedback on a fresh machine: installs what the tests need, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "error: cargo not found; install the Rust toolchain (rustup, 1.85 or newer) first" >&2
    exit 2
  fi
fi

# The dashboard test drives headless Chromium (Debian's chromium); under CI=true it fails without
# it, so install it when it is missing (as root, or through sudo).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  echo "installing chromium for the dashboard test" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >&2
fi

# The guarantee tests need a real Kafka broker: reuse KAFKA_BOOTSTRAP when it is set, otherwise
# scripts/kafka.sh fetches Apache Kafka from Maven Central (Java 17 and Maven needed) and starts
# one KRaft broker on 127.0.0.1, stopped again when the tests end.
if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  trap 'bash scripts/kafka.sh stop' EXIT
fi
line="$(bash scripts/kafka.sh start)"
export "$line"
echo "tests use the Kafka broker at $KAFKA_BOOTSTRAP" >&2

# Optimised build (the `tests` profile: release without its link-time optimisation): the broker
# tests fold hundreds of thousands of records through the processor.
cargo test --profile tests --locked --all-targets "$@"
