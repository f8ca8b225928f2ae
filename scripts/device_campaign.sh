#!/usr/bin/env bash
# Run (part of) the measurement campaign on a GPU machine, from the repository root:
#
#   bash scripts/device_campaign.sh --budget-s 540 [more scripts/campaign.py options]
#
# 1. unpacks the carried site folders (.sites/*.tar.xz from scripts/build_device_sites.sh: /tmp/site with
#    bitsandbytes, trl, datasets, liger-kernel; /tmp/site-unsloth for --grid unsloth) once per
#    machine, or installs loose wheels from .whl/ into /tmp/site, and puts the grid's site on PYTHONPATH;
# 2. runs scripts/campaign.py (resumable: a second call with the same --out continues);
# 3. when $OUT is set (device tool), packs the output folder into $OUT/campaign.tgz and copies
#    the summary next to it, since only a few files come back per call.
set -uo pipefail
cd "$(dirname "$0")/.."

# packed site folders (scripts/build_device_sites.sh) unpack in a second; loose wheels install as before
for packed in .sites/*.tar.xz; do
  [ -f "$packed" ] || continue
  name=$(tar tJf "$packed" | head -1 | cut -d/ -f1)
  [ -d "/tmp/$name" ] || tar xJf "$packed" -C /tmp || { echo "unpacking $packed failed" >&2; exit 1; }
done
if [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
fi
# Unsloth pins trl <= 1.15 and must see its own set only
SITE=/tmp/site
case " $* " in *" --grid unsloth "*) SITE=/tmp/site-unsloth ;; esac
# a mixed grid's Unsloth runs (--only ...) name their site: VRAMPLAN_DEVICE_SITE=/tmp/site-unsloth
SITE="${VRAMPLAN_DEVICE_SITE:-$SITE}"
[ -d "$SITE" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export UNSLOTH_DISABLE_STATISTICS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# checkpoints for QLoRA live on local disk; override with VRAMPLAN_CHECKPOINT_CACHE
export VRAMPLAN_CHECKPOINT_CACHE="${VRAMPLAN_CHECKPOINT_CACHE:-/tmp/vramplan-checkpoints}"

# versions without importing anything heavy (imports cost ~16 s here)
python3 -c "
import importlib.metadata as m
names = ('torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes', 'nvidia-ml-py', 'pyarrow', 'fsspec')
print(' | '.join(f'{n} {m.version(n)}' for n in names))
optional = []  # the stacks grid needs these (carried as wheels)
for n in ('trl', 'datasets', 'liger-kernel', 'unsloth', 'unsloth_zoo'):
    try:
        optional.append(f'{n} {m.version(n)}')
    except m.PackageNotFoundError:
        optional.append(f'{n} missing')
print(' | '.join(optional))" || { echo "environment check failed" >&2; exit 1; }

OUTDIR="${CAMPAIGN_OUT:-out/campaign}"
mkdir -p "$OUTDIR"
python3 scripts/campaign.py --out "$OUTDIR" "$@" 2>&1 | tee -a "$OUTDIR.log"
rc=${PIPESTATUS[0]}

# allocator histories (--snapshots) travel as compact event lists, not pickles
if ls "$OUTDIR"/snapshots/*.pickle >/dev/null 2>&1; then
  python3 scripts/allocator_replay.py "$OUTDIR"/snapshots/*.pickle --events "$OUTDIR/events" >/dev/null \
    && rm -f "$OUTDIR"/snapshots/*.pickle
fi

if [ -n "${OUT:-}" ]; then
  cp "$OUTDIR/campaign-summary.txt" "$OUT/" 2>/dev/null
  cp "$OUTDIR.log" "$OUT/campaign.log" 2>/dev/null
  tar czf "$OUT/campaign.tgz" "$OUTDIR" 2>/dev/null
fi
exit "$rc"
