"""The prune stage: which block of layers goes, the pruned model it writes, and that SFT and the
merge then build on it (students/prune.py).

The model is a tiny random Llama with the packaged student's tokenizer, two of whose layers are
made identities (their output projections zeroed, so each adds nothing to the residual stream):
the stage must find exactly that block, and the pruned model must compute what the whole one
did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.core.config import load_config
from distill.core.errors import StageNotReadyError
from distill.core.models import resolve
from distill.core.rundir import Run
from student_data import write_config, write_curated

IDENTITY_LAYERS = (2, 3)  # of 6


def tiny_llama(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = resolve("packaged:smollm2-135m-instruct").path
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    with torch.no_grad():
        for i in IDENTITY_LAYERS:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pruned_run(tmp_path: Path, layers: int = 2, criterion: str = "angular", **sections) -> Run:
    run_dir = tmp_path / "run"
    write_curated(run_dir, n=24)
    model = tiny_llama(tmp_path / "tiny")
    path = write_config(run_dir, student={"model": str(model), "quantization": "none"},
                        prune={"layers": layers, "samples": 8, "criterion": criterion},
                        **sections)
    return Run(load_config(path))


def test_the_block_that_changes_the_hidden_state_least_is_removed_and_nothing_else_changes(tmp_path):
    from students.modeling import training_base
    from students.prune import run_prune
    from transformers import AutoModelForCausalLM

    run = pruned_run(tmp_path)
    with pytest.raises(StageNotReadyError, match="prune stage"):
        training_base(run.cfg, run.paths)
    summary = run_prune(run)

    assert summary["dropped"] == list(IDENTITY_LAYERS)
    assert (summary["layers_before"], summary["layers_after"]) == (6, 4)
    assert summary["block_score"] < 1e-3  # the identity block moves nothing
    info = json.loads((run.paths.pruned_student / "distill_prune.json").read_text())
    assert min(info["scores"][:2] + info["scores"][3:]) > 0.01  # every other block does
    assert run.paths.prune_plot.stat().st_size > 0
    assert training_base(run.cfg, run.paths).path == str(run.paths.pruned_student)

    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny").eval()
    pruned = AutoModelForCausalLM.from_pretrained(run.paths.pruned_student).eval()
    assert pruned.config.num_hidden_layers == 4
    ids = torch.tensor([[1, 520, 3702, 314, 253, 1345, 30]])
    with torch.no_grad():  # with the KV cache too: it is indexed by the renumbered layer_idx
        torch.testing.assert_close(pruned(ids).logits, whole(ids).logits, atol=1e-5, rtol=1e-4)
        assert torch.equal(pruned.generate(ids, max_new_tokens=6, do_sample=False),
                           whole.generate(ids, max_new_tokens=6, do_sample=False))


def test_the_loss_criterion_scores_each_block_by_the_answers_loss_without_it(tmp_path):
    """Without the identity block the model computes what it did whole, so that block's loss
    is the whole model's; the block kept out is the one with the lowest loss, and scoring
    leaves the model whole."""
    from students.prune import answer_loss, block_losses, load, training_examples
    from transformers import AutoModelForCausalLM

    run = pruned_run(tmp_path, criterion="loss")
    model, tokenizer = load(str(tmp_path / "tiny"))
    examples = training_examples(run, tokenizer, 8)
    ids, prompt_len = examples[0]
    assert 0 < prompt_len < len(ids)
    target = pq.read_table(run.paths.curated).column("target")[0].as_py()
    assert tokenizer.decode(ids[prompt_len:]).strip().startswith(target)  # the answer is scored
    whole = answer_loss(model, examples)
    losses = block_losses(model, examples, 2)
    assert len(losses) == 4  # blocks starting at 0..3: never the last layer
    assert losses[IDENTITY_LAYERS[0]] == pytest.approx(whole, abs=1e-5)
    assert len(set(round(x, 4) for x in losses)) == 4  # each block is really taken out
    assert answer_loss(model, examples) == pytest.approx(whole, abs=1e-6)  # whole again
    assert len(model.model.layers) == model.config.num_hidden_layers == 6

    from students.prune import run_prune

    summary = run_prune(run)
    best = min(range(4), key=losses.__getitem__)
    assert summary["dropped"] == [best, best + 1] and summary["criterion"] == "loss"
    assert summary["whole_model_score"] == pytest.approx(whole, abs=1e-3)
    assert AutoModelForCausalLM.from_pretrained(
        run.paths.pruned_student).config.num_hidden_layers == 4


def test_sft_and_the_merge_build_on_the_pruned_student(tmp_path):
    from distill.engines import merged_student
    from students.card import read_card
    from students.prune import run_prune
    from students.sft import run_sft

    run = pruned_run(tmp_path, sft={"max_steps": 2, "save_steps": 2, "val_fraction": 0.0})
    run_prune(run)
    run_sft(run)
    adapter = run.paths.finished_adapter("sft")
    assert read_card(adapter)["distill"]["base_model_path"] == str(run.paths.pruned_student)
    merged = merged_student(run, adapter)
    assert json.loads((merged / "config.json").read_text())["num_hidden_layers"] == 4
    # `distill serve` in merged mode merges onto what the version's record names
    from distill.serve import merged_model

    shutil.rmtree(merged)
    record = {"adapter": str(adapter), "run_dir": str(run.dir), "merged_model": None,
              "base_model": str(run.paths.pruned_student)}
    served = merged_model(run.cfg, record)
    assert json.loads((served / "config.json").read_text())["num_hidden_layers"] == 4


def test_prune_errors_name_the_key_and_exit_2(tmp_path):
    run = pruned_run(tmp_path, layers=5)
    result = CliRunner().invoke(app, ["train", "prune", str(run.dir / "config.yaml")])
    assert result.exit_code == 2, result.output
    assert "prune.layers" in result.output and "has 6 decoder layers" in result.output

    shutil.rmtree(run.dir / "prune", ignore_errors=True)
    path = write_config(tmp_path / "lora", prune={"layers": 2},
                        student={"serve": "lora"})
    result = CliRunner().invoke(app, ["train", "prune", str(path)])
    assert result.exit_code == 2, result.output
    assert "student.serve: merged" in " ".join(result.output.split())


def test_a_pruned_versions_adapter_is_recorded_on_its_pruned_base(tmp_path):
    """`distill serve` in LoRA mode serves adapters of the configured student only: a pruned
    version names its run's pruned copy, so it is served merged, never as a LoRA of the
    whole model (distill/serving/front.py refuses with that reason)."""
    from distill.core.artifacts import RunPaths
    from distill.core.versions import BASE_VERSION, model_dir, student_record

    paths = RunPaths(model_dir(tmp_path, BASE_VERSION))
    paths.adapter("sft").mkdir(parents=True)
    paths.eval_results.parent.mkdir(parents=True)
    paths.eval_results.write_text(json.dumps(
        {"main_metric": "accuracy", "models": {"student_sft": {"accuracy": 0.7}}}))
    student = {"model": "packaged:smollm2-135m-instruct"}
    for layers, base in ((0, student["model"]), (10, str(paths.pruned_student))):
        paths.manifest.write_text(json.dumps(
            {"config": {"student": student, "prune": {"layers": layers}}}))
        assert student_record(tmp_path, BASE_VERSION)["base_model"] == base
