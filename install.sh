#!/usr/bin/env bash
# Installs everything the harness needs: Debian's Fashion-MNIST package and a virtual
# environment (./.venv, or $BENCH_VENV) with this project and its dependencies.
# Safe to run again: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")"
venv=${BENCH_VENV:-.venv}

quiet() {  # run a command, hiding pip's notes about this machine's local package indexes
    "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    quiet $sudo apt-get update -qq
    quiet $sudo apt-get install -y -qq dataset-fashion-mnist
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
quiet "$venv/bin/python" -m pip install -q -e '.[test]'
# animal-mnist declares tensorflow as a dependency it does not need for its data files.
quiet "$venv/bin/python" -m pip install -q --no-deps animal-mnist==0.4
echo "installed into $venv"
