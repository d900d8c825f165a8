#!/usr/bin/env bash
# Installs what building and testing qnext need, when missing: Debian packages for the
# build and the front ends, and the Python packages the test references use (numpy, and
# the official openai client with pytest for the server tests).
set -e
pkgs="build-essential cmake pkg-config libutf8proc-dev libedit-dev libmicrohttpd-dev libcjson-dev python3 python3-pip"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if ! python3 -c "import numpy, openai, pytest, requests, tokenizers, jinja2, jsonschema" 2>/dev/null; then
  echo "installing Python packages: numpy openai pytest requests tokenizers jinja2 jsonschema"
  # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told otherwise.
  python3 -m pip install -q numpy openai pytest requests tokenizers jinja2 jsonschema 2>/dev/null ||
    python3 -m pip install -q --break-system-packages numpy openai pytest requests tokenizers jinja2 jsonschema
fi
