#!/usr/bin/env bash
# The GPU checks and figures in one go, on a bare CUDA machine with PyTorch (the device tool's image):
# installs kdbench's missing dependencies from carried wheels (.gpu/wheels), puts Fashion-MNIST where the
# tests look, then, each step capped by `timeout`, most important first:
#   1. the quick study end to end (bench/end_to_end.py: fuse auto, fresh teacher), its database kept;
#   2. harness overhead at 470 and 48 steps; 3. the `gpu` tests; 4. fused students (mlp-800 up to K = 64, cnn-s);
#   5. the notebook recipe against a kdbench trial.
# Each output goes under $OUT. Run with the device tool: command `bash bench/gpu_run.sh [STEP ...]`, carry [".gpu"].
# .gpu/ is made by: pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
#   optuna sqlalchemy alembic mako colorlog pydantic pydantic-core annotated-types typing-inspection greenlet
#   typing-extensions -d .gpu/wheels; cp -r /usr/share/datasets/fashion-mnist .gpu/data/
set -u
OUT=${OUT:-/tmp/kdbench-gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl 2>&1 | tail -2
mkdir -p /usr/share/datasets && cp -r .gpu/data/fashion-mnist /usr/share/datasets/ 2>/dev/null
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "
import importlib
for m in ['torch','torchvision','numpy','pandas','scipy','statsmodels','click','rich','optuna','sqlalchemy','pydantic','yaml']:
    try: mod = importlib.import_module(m); print(m, getattr(mod, '__version__', '?'))
    except Exception as e: print(m, 'MISSING', e)
" 2>&1 | tee -a "$OUT/device.txt"
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "   exit $? after $((SECONDS - t0)) s"; grep -v -E "Warning|^\[I|warnings.warn" "$OUT/$name.txt" | tail -"${TAIL:-14}"; }
run() {
  case $1 in
    end_to_end) TAIL=16 step end_to_end 200 python3 bench/end_to_end.py studies/fashion-mnist-quick.yaml \
                  --device cuda --storage sqlite:////tmp/quick.db; cp /tmp/quick.db "$OUT/quick.db" 2>/dev/null ;;
    overhead_470) step overhead_470 60 python3 bench/overhead.py --device cuda --subset 30000 --epochs 2 --repeats 5 ;;
    overhead_48) step overhead_48 45 python3 bench/overhead.py --device cuda --subset 3000 --epochs 2 --repeats 5 ;;
    gpu_tests) step gpu_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py ;;
    fused_mlp) step fused_mlp 80 python3 bench/fused.py --device cuda --models mlp-800 --steps 100 --repeats 3 --ks 1 16 64 ;;
    fused_cnn) step fused_cnn 60 python3 bench/fused.py --device cuda --models cnn-s --steps 100 --repeats 3 --ks 1 16 ;;
    vs_notebook) step vs_notebook 70 python3 bench/vs_notebook.py --device cuda --steps 100 --resnet-steps 50 ;;
  esac
}
# the steps named as arguments, or all of them in this order
for s in ${@:-end_to_end overhead_470 overhead_48 gpu_tests fused_mlp fused_cnn vs_notebook}; do run "$s"; done
