"""The training-memory bound: the micro-batch chosen from the lengths, that it trains the same
step as the whole batch, and the stage's own peak memory."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import pytest

from distill.core.config import SFTConfig
from students import memory


def test_micro_batch_is_the_largest_divisor_that_fits():
    assert memory.micro_batch(8, 512, 2048) == 4
    assert memory.micro_batch(8, 512, 1024) == 2
    assert memory.micro_batch(8, 200, 2048) == 8  # short rows: the whole batch
    assert memory.micro_batch(8, 512, None) == 8  # no budget: never split
    assert memory.micro_batch(6, 512, 2048) == 3  # a divisor: equal micro-batches
    assert memory.micro_batch(8, 512, 100) == 1  # even one row is over: one at a time
    assert memory.micro_batch(8, 512, 2048, sequences=2) == 2  # DPO: chosen + rejected


def test_batch_args_keep_the_effective_batch():
    args = memory.batch_args(SFTConfig(batch_size=8, grad_accum=3, micro_batch_tokens=2048),
                             longest=512)
    assert args["per_device_train_batch_size"] == 4
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 8 * 3
    off = memory.batch_args(SFTConfig(batch_size=8, micro_batch_tokens=None), longest=512)
    assert off["per_device_train_batch_size"] == 8 and off["gradient_accumulation_steps"] == 1
    auto = SFTConfig(batch_size=8)  # "auto": a CPU's budget; a GPU's big batch stays whole
    assert memory.batch_args(auto, longest=512)["per_device_train_batch_size"] == 2
    assert memory.batch_args(auto, longest=512, on_gpu=True)["per_device_train_batch_size"] == 8


def _touched_mapping(mb: int) -> mmap.mmap:
    """`mb` MiB of fresh anonymous memory, every page written (so resident)."""
    region = mmap.mmap(-1, mb * 2**20)
    for offset in range(0, len(region), mmap.PAGESIZE):
        region[offset] = 1
    return region


def test_stage_peak_is_the_stages_own():
    pytest.importorskip("torch")  # imported before the stage starts, as in a training worker

    if not memory.CLEAR_REFS.exists():
        pytest.skip("no /proc/self/clear_refs: the stage's peak falls back to the process's")
    # Fresh anonymous mappings, not bytearrays: after the suite's earlier tests the allocator
    # can hand a bytearray memory that is already resident (seen in CI), which adds no RSS.
    earlier = _touched_mapping(300)  # a peak before the stage
    earlier.close()
    peak = memory.PeakMemory().start()
    at_start = memory._status_kb("VmRSS") / 1024
    during = _touched_mapping(64)
    got = peak.summary()
    during.close()
    assert peak.own
    assert got["stage_peak_rss_mb"] >= at_start + 60, got  # the stage's allocation counts
    # ... and the larger one before the stage does not (it stays in the process's figure)
    assert got["process_peak_rss_mb"] > got["stage_peak_rss_mb"] + 100, got


def test_a_child_process_peak_is_its_own_not_its_parents():
    """Linux carries ru_maxrss over fork and exec: a `distill` started by a process that had
    used more memory would report the parent's peak. VmHWM is the child's own."""
    import resource
    import subprocess
    import sys

    big = _touched_mapping(1000)  # this process's peak, before the child starts
    code = ("import json; from students.memory import PeakMemory; "
            "print(json.dumps(PeakMemory().start().summary()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    big.close()
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = json.loads(out.splitlines()[-1])
    assert child["process_peak_rss_mb"] < parent_peak - 500, (child, parent_peak)


def _tiny_llama(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def _one_step(tokenizer, rows, tmp_path, per_device: int, accum: int):
    """One optimizer step of TRL's SFTTrainer over the same 8 rows: its logged loss and the
    norm of its accumulated gradient."""
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    model = _tiny_llama(tokenizer)
    args = TrlSFTConfig(output_dir=str(tmp_path / f"b{per_device}"), max_steps=1,
                        per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
                        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[],
                        use_cpu=True, seed=0, max_length=64, dataloader_num_workers=0,
                        completion_only_loss=True, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    return logged["loss"], logged["grad_norm"]


def test_micro_batches_train_the_same_step_as_the_whole_batch(tmp_path):
    """Rows of uneven length and answers of uneven length: the token-normalised loss of four
    accumulated micro-batches is the whole batch's, and so is the gradient."""
    from distill.core.models import resolve
    from students import modeling

    tokenizer = modeling.load_tokenizer(resolve("packaged:smollm2-135m-instruct").path)
    rows = [{"prompt": [{"role": "user", "content": "word " * (3 + 5 * i)}],
             "completion": [{"role": "assistant", "content": "yes " * (1 + i % 3)}]}
            for i in range(8)]
    whole_loss, whole_grad = _one_step(tokenizer, rows, tmp_path, per_device=8, accum=1)
    micro_loss, micro_grad = _one_step(tokenizer, rows, tmp_path, per_device=2, accum=4)
    assert micro_loss == pytest.approx(whole_loss, abs=1e-5)
    # float32 sums in another order: 1.5e-5 apart (measured); the loss above is checked to 1e-5,
    # so a wrong normalisation of the uneven micro-batches is caught there first
    assert micro_grad == pytest.approx(whole_grad, rel=1e-4)
