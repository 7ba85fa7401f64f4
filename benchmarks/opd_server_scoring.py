"""OPD with the teacher behind `vllm serve` (opd.teacher_scoring: server) against the in-process
teacher, on the OPD test's tiny problem: SmolLM2-135M as teacher, the same model plus a noisy
LoRA as the student (tests/students/test_opd.py), plain LoRA on the CPU.

One teacher server serves every variant (a keyless vLLM endpoint, teacher.backend: openai);
each variant is a real `run_opd` on a fresh run dir. Also times the scoring call alone (one
batched prompt_logprobs request). Prints one JSON object.

    python benchmarks/opd_server_scoring.py --variants "server,1,1,1e-3" "server,0,20,1e-3"
    (a variant: scoring,beta,server_top_k,learning_rate)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "students")]

from adapter_helpers import noisy_adapter  # noqa: E402  (the OPD test's own helpers)
from student_data import tiny_config  # noqa: E402
from test_opd import OPD, write_prompts  # noqa: E402

from distill.core.config import RunConfig  # noqa: E402
from distill.core.models import resolve  # noqa: E402
from distill.core.rundir import Run  # noqa: E402
from students import opd  # noqa: E402
from teachers.serve import vllm_server  # noqa: E402

SMOL = "packaged:smollm2-135m-instruct"


def run_variant(tmp: Path, url: str, scoring: str, beta: float, top_k: int, lr: float) -> dict:
    run_dir = tmp / f"{scoring}-{beta}-{top_k}-{lr}"
    teacher = {"model": SMOL, "max_model_len": 256}
    if scoring == "server":
        teacher |= {"backend": "openai", "endpoint": {"base_url": url, "model": "teacher"}}
    raw = tiny_config(run_dir, teacher=teacher, student={"quantization": "none"},
                      opd={**OPD, "teacher_scoring": scoring, "beta": beta,
                           "server_top_k": top_k, "learning_rate": lr})
    cfg = RunConfig.model_validate(raw)
    write_prompts(run_dir)
    noisy_adapter(cfg, run_dir / "sft" / "adapter", seed=0, sigma=0.07)
    summary = opd.run_opd(Run(cfg))
    logged = [json.loads(line) for line in (run_dir / "opd" / "metrics.jsonl").open()]
    keys = ("heldout_reverse_kl_before", "heldout_reverse_kl_after", "heldout_measure",
            "train_loss", "seconds_per_step", "seconds", "peak_rss_mb")
    return {"variant": {"scoring": scoring, "beta": beta, "server_top_k": top_k, "lr": lr},
            **{k: summary.get(k) for k in keys},
            "completion_mean_length": [row.get("completions/mean_length") for row in logged
                                       if "loss" in row]}


def time_scoring(url: str, n: int = 16, length: int = 64) -> dict:
    from transformers import AutoTokenizer
    from trl.generation.vllm_client import VLLMClient

    tok = AutoTokenizer.from_pretrained(resolve(SMOL).path)
    ids = tok("The film was a delight from start to end, " * 20)["input_ids"][:length]
    client = VLLMClient(base_url=url.removesuffix("/v1"), connection_timeout=60)
    client.get_sequence_logprobs([ids] * 2, [length // 2] * 2, top_logprobs=1)  # warm
    out = {}
    for k in (1, 20):
        start = time.perf_counter()
        client.get_sequence_logprobs([ids] * n, [length // 2] * n, top_logprobs=k)
        out[f"top{k}_seconds_{n}x{length}"] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["server,1,1,1e-3"])
    args = ap.parse_args()
    report = {"variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with vllm_server(resolve(SMOL).path, served_name="teacher", max_model_len=256,
                         log_path=Path(tmp) / "vllm.log") as url:
            report["server_start_seconds"] = round(time.perf_counter() - start, 1)
            report["scoring"] = time_scoring(url)
            for spec in args.variants:
                scoring, beta, top_k, lr = spec.split(",")
                result = run_variant(Path(tmp), url, scoring, float(beta), int(top_k), float(lr))
                report["variants"].append(result)
                print(json.dumps(result), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
