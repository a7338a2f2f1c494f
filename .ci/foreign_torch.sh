#!/usr/bin/env bash
# CI: `pip install kdbench` keeps the torch a user already has (say a CUDA build). A fresh venv gets a torch
# other than the Makefile's (default: torch 2.13.0 CPU with its torchvision 0.28.0, the floors pyproject.toml
# declares; KDBENCH_FOREIGN_TORCH="torch==X torchvision==Y" for another), then the package without extras.
# Fails (exit 1) when pip's plan lists torch or torchvision, or when their versions changed. About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${KDBENCH_FOREIGN_TORCH:-torch==2.13.0 torchvision==0.28.0}"

DIR="$(mktemp -d /tmp/kdbench-foreign-torch.XXXXXX)"
trap 'rm -rf "$DIR"' EXIT
fail() { echo "foreign_torch: FAIL: $*" >&2; exit 1; }

python3 -m venv "$DIR/venv"
PIP="$DIR/venv/bin/pip"
VERSIONS='from importlib.metadata import version as v; print(" ".join(f"{p}=={v(p)}" for p in ("torch", "torchvision")))'
# shellcheck disable=SC2086  # TORCH is a list of requirements
"$PIP" install -q $TORCH
before="$("$DIR/venv/bin/python" -c "$VERSIONS")"
echo "foreign_torch: the user's torch: $before"

"$PIP" install -q --dry-run --report "$DIR/plan.json" .
replaced="$("$DIR/venv/bin/python" - "$DIR/plan.json" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))["install"]
print(" ".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in plan
               if i["metadata"]["name"].lower() in ("torch", "torchvision")))
EOF
)"
[ -z "$replaced" ] || fail "pip install . would install $replaced over $before (a pin in pyproject.toml?)"
echo "foreign_torch: pip's plan for . installs no torch or torchvision"

"$PIP" install -q .
after="$("$DIR/venv/bin/python" -c "$VERSIONS")"
[ "$before" = "$after" ] || fail "pip install . changed $before to $after"
"$DIR/venv/bin/kdbench" --version
"$DIR/venv/bin/python" -c 'import kdbench.train, kdbench.models, kdbench.report'  # the package imports on that torch
echo "foreign_torch: OK: after pip install ., still $after"
