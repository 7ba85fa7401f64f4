#!/usr/bin/env bash
# Issue 17's GPU figures, one stage per device call, each sized to end inside one call's
# 10 minutes (a session is lent 15 minutes of device time in all, start-up included).
#
#   bash benchmarks/gpu_prepare.sh                         # here, once: wheels + tokenizer
#   run(command="bash benchmarks/gpu_check.sh sft", carry=[".whl"], timeout_s=600)
#
# Stages, in the order they matter (minutes estimated from issue 17's H100 rates, the 8B
# student's build included where it is written):
#   sft    8B-shaped student (Llama-3-8B shapes, 128,256-row LM head, random weights, nf4,
#          LoRA r=16 on all linear layers), batch 8, length 1024, 100 steps: plain TRL, then
#          ours packed (round 0); tokens/s, MFU, peak allocated and reserved memory.     (~6)
#   sft2   round 1, the order reversed: ours packed, then plain TRL. With sft, the arms'
#          order is alternated (plain, pack, pack, plain).                              (~5)
#   alloc  ours unpacked, and ours packed with PYTORCH_CUDA_ALLOC_CONF=
#          expandable_segments:True (does reserved memory stop filling the card?).       (~5)
#   dpo    20 steps each: plain TRL DPO, our DPO, our OPD (teacher in process: the student's
#          own base).                                                                   (~6)
# Before the 8B student is built, every module the arms import is imported: a missing wheel
# fails the call in seconds.
#
# The 8B student is written once to /tmp/distill_student_8b and reused by the next stage if
# the machine is still warm (call again within its idle time). Every finished arm is in
# $OUT/<stage>.runs.jsonl as it ends, so a stage cut short keeps what it measured.
#
# On this CPU, as a check of the script itself (the venv's packages, tiny shapes):
#   OUT=/tmp/gpu_out PY=.venv/bin/python INSTALL_WHEELS=0 SHAPE=tiny STEPS=3 \
#       bash benchmarks/gpu_check.sh sft
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_check.sh sft|sft2|alloc|dpo}
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
SHAPE=${SHAPE:-8b}
STEPS=${STEPS:-100}
BUDGET_S=${BUDGET_S:-560}   # the benchmark's own limit: leaves the call time to send files back
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${INSTALL_WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi

machine="$OUT/machine_$stage.txt"
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"; git log -1 --format='commit %H' 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
        || echo "no nvidia-smi"
    echo "load: $(cat /proc/loadavg 2>/dev/null)"
} > "$machine" 2>&1
"$PY" -c "import torch, transformers, trl, peft, bitsandbytes, datasets, sys
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'trl', trl.__version__, 'peft',
      peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'datasets',
      datasets.__version__)
import distill.core.config, distill.core.rundir, students.sft, students.dpo, students.opd" \
    >> "$machine" 2>&1
imported=$?
cat "$machine"
[ "$imported" = 0 ] || { echo "stage $stage: the training stack does not import (above)"; exit 3; }

common=(--random-llama "$SHAPE" --vocab 128256 --model-cache "/tmp/distill_student_$SHAPE"
        --batch-size 8 --max-seq-len 1024 --examples 1200)
# the carried tokenizer; without it bench_sft.py takes the packaged student's (here, on a CPU)
[ -f .whl/tokenizer/tokenizer.json ] && common+=(--tokenizer .whl/tokenizer)
case "$stage" in
    sft) args=(--max-words 900 --steps "$STEPS" --arms plain,ours_pack) ;;
    sft2) args=(--max-words 900 --steps "$STEPS" --first-round 1 --arms plain,ours_pack) ;;
    alloc) args=(--max-words 900 --steps "$STEPS" --rounds 1 --arms ours,ours_pack
                 --alloc-conf expandable_segments:True) ;;
    dpo) args=(--max-words 300 --steps $((STEPS < 20 ? STEPS : 20)) --rounds 1
               --opd-new-tokens 64 --arms plain_dpo,ours_dpo,ours_opd) ;;
    *) echo "unknown stage $stage (sft, sft2, alloc, dpo)" >&2; exit 2 ;;
esac
echo "+ bench_sft.py ${common[*]} ${args[*]}" | tee "$OUT/$stage.log"
timeout "$BUDGET_S" "$PY" benchmarks/bench_sft.py "${common[@]}" "${args[@]}" \
    --json "$OUT/$stage.json" 2>&1 | tee -a "$OUT/$stage.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "stage $stage: stopped at ${BUDGET_S} s; finished arms are in $stage.runs.jsonl"
exit "$rc"
