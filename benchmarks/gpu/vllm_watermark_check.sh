#!/usr/bin/env bash
# GPU check of distillguard's vLLM plugin (docs/watermark-engines.md). NOT run yet: no GPU was
# lent to the session that wrote it. Needs an NVIDIA GPU, and -- on a machine without internet,
# like the project's device machines -- a wheelhouse with vLLM and its dependencies
# (WHEELHOUSE=/path, made elsewhere with `pip download vllm==$VLLM_VERSION -d wheelhouse`) and a
# model directory (MODEL=/path/to/hf-model; default: build the project's `small` Llama here).
set -euo pipefail
cd "$(dirname "$0")/../.."
VLLM_VERSION="${VLLM_VERSION:-0.11.0}"  # a release with the V1 logits-processor interface
VENV="${VENV:-/tmp/dg-vllm-venv}"
OUT="${OUT:-/tmp/dg-vllm-out}"
mkdir -p "$OUT"
python3 -m venv "$VENV"
if [ -n "${WHEELHOUSE:-}" ]; then
  "$VENV/bin/pip" install --no-index --find-links "$WHEELHOUSE" "vllm==$VLLM_VERSION"
else
  "$VENV/bin/pip" install "vllm==$VLLM_VERSION"
fi
"$VENV/bin/pip" install --no-deps -e .  # distillguard: registers the entry point
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points
names = [e.value for e in entry_points(group="vllm.logits_processors")]
assert any("distillguard" in n for n in names), names
print("entry point registered:", names)
PY
if [ -z "${MODEL:-}" ]; then
  MODEL="$OUT/small-llama"
  "$VENV/bin/python" -c "from pathlib import Path; from distillguard.models.teacher import build_tiny_model; build_tiny_model(Path('$MODEL'), data_dir=Path('../shared/data'), max_steps=300)"
fi
for scheme in kgw gumbel synthid; do
  OUT="$OUT" "$VENV/bin/python" benchmarks/gpu/vllm_watermark_check.py --model "$MODEL" \
    --scheme "$scheme" | tee "$OUT/check-$scheme.txt"
done
