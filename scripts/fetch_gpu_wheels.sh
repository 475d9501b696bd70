#!/usr/bin/env bash
# Download the pure-Python wheels that scripts/gpu_check.sh needs on a GPU machine without
# network access (its python3 has torch, torchvision, numpy, pillow, rich, typer, PyYAML, but
# not hydra-core / omegaconf / antlr4-python3-runtime).
#
# Usage (here, with network, from anywhere in the checkout):
#   scripts/fetch_gpu_wheels.sh              # -> .gpu_wheels/*.whl (about 0.4 MB)
#   WITH_YAML=1 scripts/fetch_gpu_wheels.sh  # also a PyYAML wheel for CPython 3.12 x86_64
#   GPU_WHEELS=/some/dir scripts/fetch_gpu_wheels.sh
#   scripts/fetch_gpu_wheels.sh --quick      # into a temporary folder (CI checks it runs)
# Then carry the folder to the GPU machine (device tool: carry [".gpu_wheels"]) and run
# scripts/gpu_check.sh there, which installs them with
#   pip install --no-index --no-deps --target .gpu_site .gpu_wheels/*.whl
# Versions are the ones constraints.txt pins (hydra-core 1.3.8, omegaconf 2.3.1,
# antlr4-python3-runtime 4.9.3); override with HYDRA_VER / OMEGACONF_VER / ANTLR_VER.
#
# hydra-core and omegaconf publish py3-none-any wheels. antlr4-python3-runtime 4.9.3 (the
# 4.9.* series that omegaconf 2.3 requires) is published only as a source archive: it is
# pure Python, so `pip wheel` builds a py3-none-any wheel from it here. PyYAML is NOT pure
# Python (a C extension per CPython version); the GPU machine's python3 (3.12) has it, so it
# is fetched only with WITH_YAML=1, as the manylinux cp312 wheel.
# .gpu_wheels/ and .gpu_site/ belong in .gitignore.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--quick" ]; then  # CI: the same downloads into a temporary folder
  GPU_WHEELS=${GPU_WHEELS:-$(mktemp -d)}
fi
DEST=${GPU_WHEELS:-.gpu_wheels}
HYDRA_VER=${HYDRA_VER:-1.3.8}
OMEGACONF_VER=${OMEGACONF_VER:-2.3.1}
ANTLR_VER=${ANTLR_VER:-4.9.3}
YAML_VER=${YAML_VER:-6.0.2}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

mkdir -p "$DEST"
rm -f "$DEST"/hydra_core-*.whl "$DEST"/omegaconf-*.whl "$DEST"/antlr4_python3_runtime-*.whl

"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
    "hydra-core==$HYDRA_VER" "omegaconf==$OMEGACONF_VER"
# pytest (pure Python) for the CUDA-only tests gpu_check.sh runs (pytest -m cuda)
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
    $(grep -E '^(pytest|pluggy|iniconfig|packaging)==' "$(dirname "$0")/../constraints.txt")
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
        "antlr4-python3-runtime==$ANTLR_VER" 2>/dev/null; then
    echo "antlr4-python3-runtime==$ANTLR_VER has no wheel on the index: building one from its" \
         "source archive (pure Python)"
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "antlr4-python3-runtime==$ANTLR_VER"
fi
if [ "${WITH_YAML:-0}" = 1 ]; then
    rm -f "$DEST"/PyYAML-*.whl "$DEST"/pyyaml-*.whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        "PyYAML==$YAML_VER"
fi

for w in "$DEST"/*.whl; do
    case "$w" in
        *-py3-none-any.whl|*-py2.py3-none-any.whl|*cp312*manylinux*x86_64*.whl) ;;
        *) echo "error: $w is not a wheel the GPU machine's Python 3.12 can use" >&2; exit 1 ;;
    esac
done
ls -l "$DEST"
echo "ok: carry $DEST to the GPU machine and run scripts/gpu_check.sh there"
