# Sourced by the GPU tuning scripts: run from the repository root with the checkout importable,
# and name this GPU. Sets PY (${PYTHON:-python3} unless the script set PY first), KEY (the
# normalized GPU key, e.g. nvidia-h100-80gb-hbm3) and FAMILY (the --gpu alias, e.g. h100).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-${PYTHON:-python3}}
_gpu=$($PY -c "from questkern.configs.gpus import current_gpu_key as k, gpu_family as f; print(k(), f(k()) or k())")
read -r KEY FAMILY <<<"$_gpu"
