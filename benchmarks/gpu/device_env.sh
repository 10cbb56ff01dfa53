# Source this on a GPU machine without a package registry, from the repository root:
#   source benchmarks/gpu/device_env.sh
# It installs the wheels carried in .gpu/whl (diffusers, a mamba-ssm wheel built for the card, ...),
# .gpu-sitk or .gpu-full/whl (SimpleITK, diffusers, timm) into /tmp/site, builds mamba-ssm from the sdist in
# .gpu-full when no wheel came along (about 170 s for sm_90 alone, with a build-cuda-ext.sh
# beside it, see README.md), and puts everything and the project on PYTHONPATH. docs/benchmarks.md says how our
# numbers were made.
for dir in .gpu/whl .gpu-sitk .gpu-full/whl; do
  if compgen -G "$dir/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
  fi
done
if [ -f .gpu-full/build-cuda-ext.sh ] && ! ls /tmp/site/selective_scan_cuda*.so > /dev/null 2>&1; then
  bash .gpu-full/build-cuda-ext.sh
fi
export PYTHONPATH=/tmp/site:$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import mamba_ssm  # noqa: F401
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    print("mamba-ssm", mamba_ssm.__version__, "imports")
except Exception as error:  # report, do not stop: our PyTorch scan still works
    print("mamba-ssm unavailable:", error)
PY
