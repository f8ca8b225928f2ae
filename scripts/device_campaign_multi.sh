#!/usr/bin/env bash
# Run (part of) the multi-GPU measurement campaign on a machine with >= 2 GPUs, from the repo root:
#
#   bash scripts/device_campaign_multi.sh --budget-s 500 [more scripts/campaign_multi.py options]
#
# 1. unpacks the carried site folders (.sites/stack.tar.xz, .sites/deepspeed.tar.xz) or installs .whl/*.whl into
#    /tmp/site once per machine and puts them on PYTHONPATH;
# 2. keeps NVLink multicast off (NCCL_NVLS_ENABLE=0 ...: shared hosts) and runs
#    scripts/campaign_multi.py (one torchrun launch per run; resumable with the same --out);
# 3. when $OUT is set (device tool), packs the output folder into $OUT/campaign-multi.tgz and
#    copies the summary and log next to it.
set -uo pipefail
cd "$(dirname "$0")/.."

# packed site folders (scripts/build_device_sites.sh: /tmp/site with bitsandbytes ..., /tmp/site-ds with
# DeepSpeed and the pydantic it needs) unpack in a second; loose wheels in .whl/ install as before
for packed in .sites/stack.tar.xz .sites/deepspeed.tar.xz; do
  [ -f "$packed" ] || continue
  name=$(tar tJf "$packed" | head -1 | cut -d/ -f1)
  [ -d "/tmp/$name" ] || tar xJf "$packed" -C /tmp || { echo "unpacking $packed failed" >&2; exit 1; }
done
if [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
fi
for site in /tmp/site /tmp/site-ds; do
  [ -d "$site" ] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VRAMPLAN_CHECKPOINT_CACHE="${VRAMPLAN_CHECKPOINT_CACHE:-/tmp/vramplan-checkpoints}"

python3 -c "
import importlib.metadata as m
names = ('torch', 'transformers', 'peft', 'accelerate')
print(' | '.join(f'{n} {m.version(n)}' for n in names))
for n in ('bitsandbytes', 'nvidia-ml-py', 'deepspeed', 'pydantic'):  # (a DeepSpeed-only campaign carries no bitsandbytes)
    try:
        print(n, m.version(n))
    except m.PackageNotFoundError:
        print(n, 'missing')" || { echo "environment check failed" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader 2>/dev/null

OUTDIR="${CAMPAIGN_OUT:-out/campaign-multi}"
mkdir -p "$OUTDIR"
python3 scripts/campaign_multi.py --out "$OUTDIR" "$@" 2>&1 | tee -a "$OUTDIR.log"
rc=${PIPESTATUS[0]}

# allocator histories (--snapshots, world size 1) travel as compact event lists, not pickles
if ls "$OUTDIR"/snapshots/*.pickle >/dev/null 2>&1; then
  python3 scripts/allocator_replay.py "$OUTDIR"/snapshots/*.pickle --events "$OUTDIR/events" --frames "$OUTDIR/events" >/dev/null \
    && rm -f "$OUTDIR"/snapshots/*.pickle
fi

if [ -n "${OUT:-}" ]; then
  cp "$OUTDIR/campaign-summary.txt" "$OUT/" 2>/dev/null
  cp "$OUTDIR.log" "$OUT/campaign-multi.log" 2>/dev/null
  tar czf "$OUT/campaign-multi.tgz" "$OUTDIR" 2>/dev/null
fi
exit "$rc"
