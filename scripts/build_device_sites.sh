#!/usr/bin/env bash
# Build the package sets the GPU machine lacks as compressed site folders (.sites/*.tar.xz, git-ignored),
# from wheels downloaded here (README "Measuring on a lent GPU machine"):
#
#   bash scripts/build_device_sites.sh [WHEEL_DIR ...]
#
# * .sites/stack.tar.xz   -> /tmp/site:          every wheel in .whl/ (TRL, datasets, Liger, bitsandbytes, ...)
# * .sites/unsloth.tar.xz -> /tmp/site-unsloth:  .whl-unsloth/ (unsloth, unsloth_zoo, trl <= 1.15, torchao, pydantic,
#   cut_cross_entropy, msgspec, nest_asyncio) plus the .whl/ wheels it shares (bitsandbytes, datasets, ...)
# * .sites/deepspeed.tar.xz -> /tmp/site-ds:   .whl-ds/ (deepspeed 0.19.8 built here with `pip wheel --no-deps`, ops
#   left to JIT compilation; hjson; pydantic, pydantic_core, annotated_types, typing_inspection, which DeepSpeed's
#   config models import); scripts/device_campaign_multi.sh puts it ahead of /tmp/site
#
# Unpacked wheels compress well, and two things are dropped that the trainer never loads: bitsandbytes'
# libraries for other CUDA and ROCm versions (the machine's torch is cu130) and Unsloth's "studio" web app
# (82 MB). Result: ~11 MB for Unsloth's set instead of 38 MB of wheels plus 30 MB of bitsandbytes.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_LIB="${BNB_CUDA:-cuda130}"
mkdir -p .sites
pack() {  # pack NAME TARGET WHEEL...
  local name=$1 target=$2
  shift 2
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$tmp/$target" --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 --only-binary=:all: "$@"
  rm -rf "$tmp/$target"/{studio,unsloth_cli,bin,test}
  find "$tmp/$target/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name "*_${CUDA_LIB}.so" ! -name '*_cpu.so' -delete 2>/dev/null || true
  tar cJf ".sites/$name.tar.xz" -C "$tmp" "$target"
  rm -rf "$tmp"
  echo ".sites/$name.tar.xz $(du -h ".sites/$name.tar.xz" | cut -f1) -> /tmp/$target"
}
if ls .whl/*.whl >/dev/null 2>&1; then
  pack stack site .whl/*.whl
fi
if ls .whl-unsloth/*.whl >/dev/null 2>&1; then
  shared=$(ls .whl/*.whl | grep -v -e '/trl-' -e '/liger_kernel-')
  # shellcheck disable=SC2086
  pack unsloth site-unsloth .whl-unsloth/*.whl $shared
fi
if ls .whl-ds/*.whl >/dev/null 2>&1; then
  pack deepspeed site-ds .whl-ds/*.whl
fi
