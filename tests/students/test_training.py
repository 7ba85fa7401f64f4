"""Real training on the packaged SmolLM2-135M: QLoRA SFT, DPO, export, vLLM LoRA, resume, Ray Train.

Sizes are tiny (tens of short examples, single-digit steps, LoRA r=8, max_seq_len 128) so the
whole file stays within a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from students.callbacks import read_metrics
from students.recipe import checkpoint_step, last_checkpoint

from student_data import build_run, write_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One QLoRA SFT run shared by the SFT, DPO and export tests."""
    from distill.pipeline import run_stage

    # A token budget below batch x longest row: the batch of 4 trains in micro-batches.
    run = build_run(tmp_path_factory.mktemp("sft") / "run", n=40,
                    sft={"max_steps": 8, "save_steps": 4, "logging_steps": 2,
                         "micro_batch_tokens": 128})
    summary = run_stage(run, "sft")
    return run, summary


def test_qlora_sft_lowers_heldout_loss(sft_run):
    run, summary = sft_run
    assert summary["quantization"] == "nf4" and summary["steps"] == 8
    assert summary["eval_loss_after"] < 0.5 * summary["eval_loss_before"], summary
    adapter = run.dir / "sft" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size < 20 * 2**20
    card = (adapter / "README.md").read_text()
    assert "packaged:smollm2-135m-instruct" in card and "dataset_sha256" in card
    assert "eval_loss_after" in card
    lines = read_metrics(run.dir / "sft" / "metrics.jsonl")
    assert any("tokens_per_s" in line and line["tokens_per_s"] > 0 for line in lines)
    assert summary["tokens_per_s"] > 0
    assert 0 < summary["stage_peak_rss_mb"] <= summary["process_peak_rss_mb"]
    assert summary["micro_batch"] < 4 and summary["micro_batch"] * summary["grad_accum_steps"] == 4
    assert run.manifest["models"]["student"]["adapter"] == str(adapter)
    assert last_checkpoint(run.dir / "sft" / "checkpoints").name == "checkpoint-8"


def test_dpo_raises_reward_margin(sft_run):
    from students.dpo import run_dpo

    run, _ = sft_run
    write_pairs(run.dir, n=24)
    summary = run_dpo(run)
    assert summary["steps"] == 8 and summary["pairs"] == 24
    assert summary["stage_peak_rss_mb"] > 0 and summary["micro_batch"] == 4  # DPO's own budget
    assert summary["reward_margin_last"] > summary["reward_margin_first"] + 0.05, summary
    assert summary["reward_accuracy_last"] >= summary["reward_accuracy_first"]
    adapter = run.dir / "dpo" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert not (adapter / "ref").exists()  # only the trained adapter, not TRL's frozen reference
    assert "parent_adapter" in (adapter / "README.md").read_text()


def _greedy_transformers(base_path: str, adapter: Path, prompts: list[list[int]]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    outs, base_outs = [], []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            outs.append(model.generate(x, max_new_tokens=6, do_sample=False)[0, len(ids):].tolist())
            with model.disable_adapter():
                base_outs.append(
                    model.generate(x, max_new_tokens=6, do_sample=False)[0, len(ids):].tolist())
    return outs, base_outs


def _greedy_vllm(base_path: str, adapter: Path, prompts: list[list[int]], rank: int):
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=base_path, enable_lora=True, max_lora_rank=rank, max_loras=1,
              enforce_eager=True, dtype="float32", max_model_len=256, seed=0)
    try:
        results = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts],
            SamplingParams(temperature=0.0, max_tokens=6),
            lora_request=LoRARequest("student", 1, str(adapter)),
        )
        return [list(r.outputs[0].token_ids) for r in results]
    finally:
        del llm


def test_exported_adapter_same_greedy_in_transformers_and_vllm(sft_run, student_path):
    from transformers import AutoTokenizer

    from distill.core.messages import student_messages
    from students.export import run_export

    run, _ = sft_run
    run.cfg.export.merged = True
    summary = run_export(run)
    adapter = Path(summary["adapter"])
    assert (adapter / "README.md").is_file() and summary["adapter_mb"] < 20
    assert (run.dir / "export" / "merged" / "model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(student_path)
    texts = ["The movie is a joy to watch.", "A tedious waste of time.", "Loved the cast."]
    prompts = [tokenizer.apply_chat_template(student_messages(run.cfg.task, t),
                                             add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
               for t in texts]
    hf, hf_base = _greedy_transformers(student_path, adapter, prompts)
    assert hf != hf_base, "the adapter did not change the model's answers"
    vllm_out = _greedy_vllm(student_path, adapter, prompts, rank=run.cfg.student.lora.r)
    for ids, a, b in zip(prompts, hf, vllm_out):
        # vLLM stops at EOS and drops it; transformers keeps it in the sequence.
        eos = tokenizer.eos_token_id
        assert [t for t in a if t != eos] == [t for t in b if t != eos], tokenizer.decode(ids)

    # The merged model answers like base + adapter.
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run.dir / "export" / "merged",
                                                  dtype=torch.float32)
    x = torch.tensor([prompts[0]])
    out = merged.generate(x, max_new_tokens=6, do_sample=False)[0, len(prompts[0]):].tolist()
    assert out == hf[0]


def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    """A real kill: the CLI trains in a subprocess, SIGKILLed once its first checkpoint is
    complete; the rerun must start from that checkpoint's step and finish."""
    from distill.pipeline import run_stage

    run = build_run(tmp_path / "run", n=24,
                    student={"quantization": "none"},
                    sft={"max_steps": 6, "save_steps": 2, "logging_steps": 1, "batch_size": 2,
                         "val_fraction": 0.0})
    checkpoints = run.dir / "sft" / "checkpoints"
    cli = Path(sys.executable).with_name("distill")
    proc = subprocess.Popen([str(cli), "train", "sft", str(run.dir / "config.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while last_checkpoint(checkpoints) is None:
            assert proc.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = checkpoint_step(last_checkpoint(checkpoints))
    assert 2 <= killed_at < 6
    assert not (run.dir / "sft" / "adapter").exists()

    from distill.core.config import load_config
    from distill.core.rundir import Run

    rerun = Run(load_config(run.dir / "config.yaml"))
    assert rerun.manifest["stages"]["sft"]["status"] == "running"  # killed, not done
    summary = run_stage(rerun, "sft")
    assert summary["resumed_from_step"] == killed_at
    assert summary["steps"] == 6
    assert checkpoint_step(last_checkpoint(checkpoints)) == 6
    steps_logged = [m["global_step"] for m in read_metrics(run.dir / "sft" / "metrics.jsonl")
                    if "loss" in m]
    # The rerun logged only the steps after the checkpoint.
    assert steps_logged[-(6 - killed_at):] == list(range(killed_at + 1, 7))
    assert (run.dir / "sft" / "adapter" / "adapter_config.json").is_file()


def test_ray_train_two_workers(tmp_path, ray_local):
    from students.sft import run_sft

    run = build_run(tmp_path / "run", n=24,
                    student={"quantization": "none"},
                    sft={"workers": 2, "max_steps": 3, "save_steps": 100, "logging_steps": 1,
                         "batch_size": 2, "val_fraction": 0.0})
    summary = run_sft(run)
    assert summary["world_size"] == 2 and summary["steps"] == 3
    lines = read_metrics(run.dir / "sft" / "metrics.jsonl")
    assert lines and all(m["world_size"] == 2 for m in lines)
    assert (run.dir / "sft" / "adapter" / "adapter_config.json").is_file()
