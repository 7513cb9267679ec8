#!/usr/bin/env bash
# Every GPU figure of issue 13 in one run: `bash benchmarks/gpu.sh [gpu.py options]` from anywhere.
# Needs only the repository and pip. A venv (benchmarks/.venv-gpu) sees the machine's own packages
# (--system-site-packages), so a CUDA build of torch already installed is used as it is, never
# replaced; `pip install -e .` adds what is missing. Offline, with everything already installed,
# the install step fails harmlessly and the benchmark runs. No model is downloaded: the stand-in
# weights are built in code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=benchmarks/.venv-gpu
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, diffusers, transformers, discord, sqlalchemy, alembic, aiosqlite, compel, pydantic_settings" 2>/dev/null \
        || ! "$VENV/bin/python" -c "import bot, generation" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet -e . \
        || echo "gpu.sh: pip install failed (offline?); running with what is installed" >&2
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/python" benchmarks/gpu.py "$@"
