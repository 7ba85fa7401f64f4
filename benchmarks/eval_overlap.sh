#!/bin/bash
# eval + bench of a finished quickstart run (seed 0), eval.overlap_server_starts on then off,
# one after the other on the same machine. Run from a clone whose runs/quickstart holds a
# finished `distill run configs/quickstart.yaml` (it rewrites that clone's config):
#   flock /tmp/cpu.lock benchmarks/eval_overlap.sh
# Each arm deletes the saved answers and latency measurements so eval asks everything again.
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE=2 PYTHONPATH=$PWD
git log --oneline | head -1
for arm in true false; do
  sed -i "s/^  overlap_server_starts: .*//" configs/quickstart.yaml
  python3 - "$arm" <<'PY'
import sys, yaml
p = "configs/quickstart.yaml"
cfg = yaml.safe_load(open(p))
cfg.setdefault("eval", {})["overlap_server_starts"] = sys.argv[1] == "true"
yaml.safe_dump(cfg, open(p, "w"), sort_keys=False)
PY
  uptime
  rm -f runs/quickstart/eval/answers_*.json runs/quickstart/bench/measured/*
  s=$(date +%s)
  ${DISTILL:-.venv/bin/distill} eval configs/quickstart.yaml --force
  e=$(date +%s)
  ${DISTILL:-.venv/bin/distill} bench configs/quickstart.yaml --force
  b=$(date +%s)
  echo "ARM overlap=$arm EVAL_S=$((e-s)) BENCH_S=$((b-e))"
  python3 -c "import json;d=json.load(open('runs/quickstart/eval/results.json'));print('SECONDS', d['seconds'])"
  python3 -c "import json;d=json.load(open('runs/quickstart/bench/results.json'));print('BENCH', {k:(v.get('latency_p50_ms') if isinstance(v,dict) else v) for k,v in d.get('models',{}).items()})" 2>/dev/null
  uptime
done
