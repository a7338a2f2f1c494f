#!/usr/bin/env bash
# The GPU checks and figures in one go, on a bare CUDA machine with PyTorch (the device tool's image):
# installs kdbench's missing dependencies from carried wheels (.gpu/wheels), puts Fashion-MNIST where the
# tests look, runs the `gpu` tests and the benchmarks on cuda, and writes each output under $OUT.
# Run with the device tool: command `bash bench/gpu_run.sh`, carry [".gpu"].
set -u
OUT=${OUT:-/tmp/kdbench-gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl 2>&1 | tail -2
mkdir -p /usr/share/datasets && cp -r .gpu/data/fashion-mnist /usr/share/datasets/ 2>/dev/null
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "
import importlib
for m in ['torch','torchvision','PIL','pandas','numpy','click','rich','optuna','sqlalchemy','pydantic','yaml']:
    try: mod = importlib.import_module(m); print(m, getattr(mod, '__version__', '?'))
    except Exception as e: print(m, 'MISSING', e)
" 2>&1 | tee "$OUT/imports.txt"
timeout 140 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
timeout 110 python3 bench/fused.py --device cuda --steps 100 --repeats 3 2>&1 | grep -v Warning | tee "$OUT/fused.txt"
timeout 70 python3 bench/overhead.py --device cuda --subset 30000 --epochs 2 --repeats 5 2>&1 | grep -v "^\[I" | tee "$OUT/overhead.txt"
timeout 70 python3 bench/vs_notebook.py --device cuda --steps 100 --resnet-steps 50 2>&1 | tee "$OUT/vs_notebook.txt"
