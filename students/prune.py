"""Prune stage: remove a block of the student's decoder layers before SFT, so that it answers
faster.

On a CPU at concurrency 1 a small student's time per token is its layers one after another,
each a handful of small matmuls whose cost is mostly fixed; fewer layers is what makes it
faster, not fewer bytes (benchmarks/results/latency_profile.md). Which layers: the `n`
consecutive ones whose removal changes the model least on the task's own training
examples. `prune.criterion: loss` (the default) removes each candidate block in turn and keeps
the one whose removal leaves the lowest loss on the teacher's answers (the objective SFT then
heals); `angular` measures the angular distance between the input of the block and its output
at the last prompt token, without the answers (Gromov et al. 2024, "The Unreasonable
Ineffectiveness of the Deeper Layers"). On the quickstart's 135M student the two disagree: the
angular distance is lowest for early blocks, whose removal the model does not survive
(README, "Pruning the student"). The last layer is never removed.

The pruned model is written once per run to `<run>/prune/model/` and is the training base of
every seed: SFT, DPO, OPD, the merge and `distill serve` load it
(`students.modeling.training_base`). The base
student that eval compares against stays the unpruned model: it is what you would serve
without distilling.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from distill.core.errors import ConfigError
from distill.core.io import write_json_atomic
from distill.core.models import resolve
from distill.core.rundir import Run
from students.modeling import PRUNE_INFO


def run_prune(run: Run) -> dict:
    cfg = run.cfg
    if not cfg.prune.layers:
        return {"skipped": True}
    start_time = time.perf_counter()
    source = resolve(cfg.student.model)
    model, tokenizer = load(source.path)
    total = len(decoder_layers(model))
    if cfg.prune.layers > total - 2:
        raise ConfigError("prune.layers", [f"{cfg.prune.layers}: {cfg.student.model} has "
                                           f"{total} decoder layers; at most {total - 2} can go "
                                           "(two stay, the last one among them)"])
    examples = training_examples(run, tokenizer, cfg.prune.samples)
    if cfg.prune.criterion == "loss":
        scores, whole = block_losses(model, examples, cfg.prune.layers), answer_loss(model, examples)
    else:
        scores, whole = block_distances(model, tokenizer, [ids[:n] for ids, n in examples],
                                        cfg.prune.layers), 0.0
    start = min(range(len(scores)), key=scores.__getitem__)
    drop = range(start, start + cfg.prune.layers)
    params_before = sum(p.numel() for p in model.parameters())
    remove_layers(model, drop)
    info = {"source": source.to_manifest(), "layers_before": total,
            "layers_after": total - len(drop), "dropped": [drop.start, drop.stop - 1],
            "params_before": params_before,
            "params_after": sum(p.numel() for p in model.parameters()),
            "examples": len(examples), "criterion": cfg.prune.criterion,
            "block_score": round(scores[start], 4), "whole_model_score": round(whole, 4),
            "scores": [round(d, 4) for d in scores]}
    save_pruned(model, tokenizer, run.paths.pruned_student, info)
    _plot(scores, whole, start, cfg.prune.layers, cfg.prune.criterion, run.paths.prune_plot)
    return {**{k: v for k, v in info.items() if k not in ("source", "scores")},
            "model": str(run.paths.pruned_student),
            "seconds": round(time.perf_counter() - start_time, 1)}


def load(path: str):
    from transformers import AutoModelForCausalLM

    from students.modeling import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map={"": "cpu"})
    model.eval()
    return model, load_tokenizer(path)


def decoder_layers(model):
    """The decoder's layer list (`model.model.layers` in Llama, Qwen, Mistral, Gemma...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError("prune.layers", [f"{type(model).__name__}: no model.layers list to "
                                           "prune (decoder-only models of the Llama family "
                                           "have one)"])
    return layers


def training_examples(run: Run, tokenizer, limit: int) -> list[tuple[list[int], int]]:
    """The first `limit` curated training rows as the student sees them in SFT: token ids of
    its chat prompt followed by the teacher's answer, and the prompt's length. Cut from the left
    to max_seq_len (the end holds the question and the answer)."""
    from students.data import sft_records

    records = sft_records(run.paths.curated, run.cfg.task)[:limit]
    budget = run.cfg.student.max_seq_len
    examples = []
    for r in records:
        prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                             return_dict=False)
        if full[:len(prompt)] != prompt:  # a template that renders the turn differently
            full = prompt + tokenizer.encode(r["completion"][0]["content"],
                                             add_special_tokens=False)
        cut = max(0, len(full) - budget)
        examples.append((full[cut:], max(1, len(prompt) - cut)))
    return examples


def answer_loss(model, examples: list[tuple[list[int], int]], batch: int = 16) -> float:
    """Mean over examples of the cross-entropy of the answer tokens given the prompt. Rows of
    similar length go together, padded on the right: with causal attention a real token never
    sees the padding after it, so no mask is needed and each row's loss is its own."""
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = 0.0
    for first in range(0, len(order), batch):
        rows = [examples[i] for i in order[first:first + batch]]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [ids[-1]] * (width - len(ids)) for ids, _ in rows])
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits.float()
        for row, (ids, prompt_len) in enumerate(rows):
            total += torch.nn.functional.cross_entropy(
                logits[row, prompt_len - 1:len(ids) - 1], torch.tensor(ids[prompt_len:])).item()
    return total / len(examples)


def block_losses(model, examples: list[tuple[list[int], int]], n: int) -> list[float]:
    """For each first layer l (never reaching the last layer), the answer loss of the model
    with layers l .. l+n-1 removed; the model is whole again afterwards."""
    total = len(decoder_layers(model))
    losses = []
    for start in range(total - n):
        with _without(model, range(start, start + n)):
            losses.append(answer_loss(model, examples))
    return losses


@contextmanager
def _without(model, drop: range):
    config = model.config
    layers = decoder_layers(model)
    saved = (config.num_hidden_layers, getattr(config, "layer_types", None),
             getattr(config, "max_window_layers", None))
    indices = [getattr(getattr(layer, "self_attn", None), "layer_idx", None) for layer in layers]
    remove_layers(model, drop)
    try:
        yield model
    finally:
        model.model.layers = layers
        config.num_hidden_layers = saved[0]
        if saved[1] is not None:
            config.layer_types = saved[1]
        if saved[2] is not None:
            config.max_window_layers = saved[2]
        for layer, index in zip(layers, indices):
            if index is not None:
                layer.self_attn.layer_idx = index


def block_distances(model, tokenizer, prompts: list[list[int]], n: int) -> list[float]:
    """For each first layer l, the mean angular distance (arccos of the cosine, over pi)
    between the hidden state entering layer l and the one leaving layer l+n-1, at each
    prompt's last token. Blocks that would remove the last layer are not offered."""
    import torch

    total = len(decoder_layers(model))
    sums = [0.0] * (total - n)  # starts 0 .. total-n-1: the block never reaches the last layer
    for ids in prompts:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        # hidden_states[i] enters layer i; the last entry is after the final norm, unused here.
        states = [h[0, -1].float() for h in out.hidden_states[:total]]
        for start in range(total - n):
            cos = torch.nn.functional.cosine_similarity(states[start], states[start + n], dim=0)
            sums[start] += math.acos(max(-1.0, min(1.0, cos.item()))) / math.pi
    return [s / len(prompts) for s in sums]


def remove_layers(model, drop: range) -> None:
    """Delete the layers in `drop` and renumber the rest, in the module and in its config."""
    import torch

    layers = decoder_layers(model)
    keep = [i for i in range(len(layers)) if i not in drop]
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new, layer in enumerate(model.model.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new  # the KV cache is indexed by it
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, len(keep))


def save_pruned(model, tokenizer, dest: Path, info: dict) -> None:
    """Written to a sibling folder and renamed, so a crash never leaves half a model."""
    staged = dest.with_name(f".{dest.name}.tmp")
    if staged.exists():
        shutil.rmtree(staged)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    write_json_atomic(staged / PRUNE_INFO, info)
    if dest.exists():
        shutil.rmtree(dest)
    staged.rename(dest)


def _plot(scores: list[float], whole: float, start: int, n: int, criterion: str,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(scores)), scores, marker="o", markersize=3)
    ax.axvline(start, color="tab:red", linestyle="--", label=f"removed: layers {start}-{start + n - 1}")
    if criterion == "loss":
        ax.axhline(whole, color="tab:gray", linestyle=":", label="whole model")
        ax.set_yscale("log")
    ax.set_xlabel("first layer of the block")
    ax.set_ylabel(f"answer loss without {n} layers" if criterion == "loss"
                  else f"angular distance over {n} layers")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
