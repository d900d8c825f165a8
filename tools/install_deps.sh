#!/usr/bin/env bash
# Installs the Debian packages that building and testing qnext need, when missing.
set -e
pkgs="build-essential cmake pkg-config libutf8proc-dev libedit-dev libmicrohttpd-dev libcjson-dev python3 python3-numpy"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
