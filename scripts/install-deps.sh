#!/bin/sh
# Installs the Debian packages tandem builds against. Runs apt-get directly as root, through sudo
# otherwise; prints the exact command when neither is possible.
set -e
PKGS="build-essential pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev \
libcjson-dev libpcre2-dev libutf8proc-dev libmicrohttpd-dev curl python3-venv"
# curl and python3-venv: test-time only (tests/test_serve.c drives `tandem serve` with curl and with
# the openai package installed into a venv)
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "Please run as root: apt-get update && apt-get install -y $PKGS" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $PKGS >/dev/null
echo "installed: $PKGS" >&2
