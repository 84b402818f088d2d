#!/usr/bin/env bash
# Wheels that bench/gpu_session.sh needs and a bare PyTorch image lacks, at the versions of this
# checkout's environment, into .whl/ (git ignores it) for a GPU machine without internet:
# diffusers and its importlib-metadata, and open_clip_torch, whose packaged BPE vocabulary the
# offline CLIP tokenizer reads (it is not imported). All pure Python: any Python 3 takes them.
set -euo pipefail
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "diffusers==$(version diffusers)" "importlib-metadata==$(version importlib-metadata)" \
    "open_clip_torch==$(version open_clip_torch)"
ls -l .whl
