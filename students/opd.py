"""OPD stage: on-policy distillation of the SFT student with TRL's DistillationTrainer.

The student (4-bit base + the SFT adapter, trainable) samples answers to the training prompts;
the teacher, loaded as a transformers model in the same process, scores every sampled token
with its full next-token distribution; the adapter is trained on the per-token divergence
(`opd.beta`: 1 = reverse KL). That needs one vocabulary for both models, checked before any
weights load (`check_pair`): a pair with different tokenizers is refused by name.
Reads `prompts/train.parquet` (and `prompts/test.parquet` for the held-out KL); writes
`opd/checkpoints/`, `opd/adapter/`, `opd/metrics.jsonl`, `opd/summary.json`.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.core.config import RunConfig
from distill.core.errors import ConfigError, StageNotReadyError
from distill.core.io import file_sha256, read_json
from distill.core.messages import Message
from distill.core.models import resolve
from distill.core.rundir import Run, run_tags
from students import card, data, memory, modeling
from students.fit import TEMPLATE_SLACK, InputFitter
from students.recipe import (
    TrainJob,
    checkpoint_step,
    common_args,
    last_checkpoint,
    run_job,
    world,
    write_summary,
)

PROMPT_COLUMNS = ("example_id", "text")
# Pairs known to share a vocabulary, named in the refusal (same family, same tokenizer).
WORKING_PAIRS = ("Qwen/Qwen2.5-1.5B-Instruct -> Qwen/Qwen2.5-0.5B-Instruct",
                 "HuggingFaceTB/SmolLM2-1.7B-Instruct -> packaged:smollm2-135m-instruct")


def run_opd(run: Run) -> dict:
    cfg = run.cfg
    if not cfg.opd.enabled:
        return {"skipped": True}
    if cfg.teacher.is_endpoint:
        raise ConfigError("teacher.backend", [
            "opd needs the teacher's weights in the training process (its full next-token "
            "distribution at every sampled token); an API teacher gives neither: set opd.enabled: "
            "false, or name a local or hub teacher model of the student's family"])
    base = resolve(cfg.student.model)
    teacher = resolve(cfg.teacher.model)
    vocab = check_pair(cfg, teacher.path, base.path)  # a config problem: before the inputs
    prompts_path = run.paths.train_prompts
    data.read_table(prompts_path, PROMPT_COLUMNS, "prompts")
    sft_adapter = run.paths.finished_adapter("sft")
    if sft_adapter is None:
        raise StageNotReadyError(f"{run.paths.adapter('sft')} not found: run the sft stage first")
    job = TrainJob(
        stage="opd",
        config=cfg.resolved(),
        run_dir=str(run.dir),
        base_path=base.path,
        data_path=str(prompts_path),
        data_sha256=file_sha256(prompts_path),
        tags=run_tags(run),
        init_adapter=str(sft_adapter),
        teacher_path=teacher.path,
        seed_index=run.seed_index,
    )
    summary = run_job(run, job, train_worker)
    return {**summary, "vocab_size": vocab}


# --- the tokenizer rule -----------------------------------------------------------------------


def vocabulary_mismatch(teacher_vocab: dict[str, int], student_vocab: dict[str, int]) -> str | None:
    """Why the teacher cannot score the student's token ids, or None when it can: every id the
    student can sample must mean the same string to the teacher."""
    if teacher_vocab == student_vocab:
        return None
    differ = sum(1 for token, i in student_vocab.items() if teacher_vocab.get(token) != i)
    differ += sum(1 for token in teacher_vocab if token not in student_vocab)
    return (f"their tokenizers differ ({len(teacher_vocab)} vs {len(student_vocab)} tokens, "
            f"{differ} token ids mean another string or nothing to the other model)")


def check_pair(cfg: RunConfig, teacher_path: str, student_path: str) -> int:
    """Refuse (ConfigError) a teacher whose tokens or output layer differ from the student's;
    returns the shared vocabulary size."""
    from transformers import AutoConfig, AutoTokenizer

    teacher_vocab = AutoTokenizer.from_pretrained(teacher_path).get_vocab()
    student_vocab = AutoTokenizer.from_pretrained(student_path).get_vocab()
    why = vocabulary_mismatch(teacher_vocab, student_vocab)
    if why is None:
        widths = [AutoConfig.from_pretrained(p).get_text_config().vocab_size
                  for p in (teacher_path, student_path)]
        if widths[0] != widths[1]:
            why = (f"their tokenizers agree but their output layers have {widths[0]} and "
                   f"{widths[1]} logits (TRL's loss compares the two distributions position by "
                   "position)")
    if why is not None:
        raise ConfigError("teacher.model", [refusal(cfg, why)])
    return len(student_vocab)


def refusal(cfg: RunConfig, why: str) -> str:
    return (
        f"opd: teacher {cfg.teacher.model} and student {cfg.student.model} cannot be distilled "
        f"on-policy here: {why}. The teacher scores each token the student samples with its own "
        "next-token distribution, so both must share one vocabulary. TRL's cross-tokenizer "
        "method (experimental GOLD, ULD loss) is not wired in: it is untested here with QLoRA. "
        f"Use a teacher and student of one family (e.g. {'; '.join(WORKING_PAIRS)}), or set "
        "opd.enabled: false (SFT and DPO work with any pair). Nothing falls back to SFT.")


# --- prompts ------------------------------------------------------------------------------------


def prompt_chats(path: Path, fitter: InputFitter, answer_tokens: int,
                 limit: int | None = None) -> list[list[Message]]:
    """The student's chats for the prompts in a prompts-stage Parquet, shortened to leave room
    for `answer_tokens` sampled tokens."""
    rows = data.read_table(path, PROMPT_COLUMNS, "prompts").select(list(PROMPT_COLUMNS))
    texts = rows.column("text").to_pylist()[:limit]
    return [fitter.messages(t, answer_tokens=answer_tokens) for t in texts if t and t.strip()]


def prompt_fitter(cfg: RunConfig, tokenizer, sft_budget: int | None) -> InputFitter:
    """SFT's prompt budget (the student is served with the cut it learnt), or room for the
    sampled answer when SFT recorded none."""
    budget = sft_budget or cfg.student.max_seq_len - cfg.opd.max_new_tokens - TEMPLATE_SLACK
    return InputFitter(cfg, tokenizer, budget)


# --- the held-out measure --------------------------------------------------------------------


def heldout_reverse_kl(student, teacher, tokenizer, chats: list[list[Message]],
                       max_new_tokens: int) -> float | None:
    """Mean per-token KL(student || teacher) in nats, over the full vocabulary, at every token
    of the student's greedy answer to each chat (the quantity OPD with beta=1 minimises, on
    prompts it never trained on). None without any answer token."""
    import torch

    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for chat in chats:
            text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
            n = prompt["input_ids"].shape[1]
            out = student.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False,
                                   use_cache=True, pad_token_id=tokenizer.pad_token_id)
            if out.shape[1] <= n:
                continue
            positions = slice(n - 1, out.shape[1] - 1)  # logits that predict the answer tokens
            s = torch.log_softmax(student(input_ids=out).logits[0, positions].float(), -1)
            t = torch.log_softmax(teacher(input_ids=out.to(teacher.device)).logits[0, positions]
                                  .float().to(device), -1)
            total += (s.exp() * (s - t)).sum().item()
            tokens += out.shape[1] - n
    if was_training:
        student.train()
    return round(total / tokens, 4) if tokens else None


# --- training ---------------------------------------------------------------------------------


def trl_args(job: TrainJob, where: modeling.Placement, longest: int):
    """`longest`: tokens of the longest prompt + sampled answer (the micro-batch is chosen from
    it; TRL samples the whole batch at once and trains on it micro-batch by micro-batch)."""
    from trl import DistillationConfig

    cfg = job.cfg
    opd = cfg.opd
    batch = memory.batch_args(opd, longest, on_gpu=where.on_gpu)
    return DistillationConfig(
        **common_args(job, opd, modeling.precision_args(where), batch),
        beta=opd.beta,
        temperature=opd.temperature,
        max_completion_length=opd.max_new_tokens,
        disable_dropout=True,  # the student's samples and its scored logits come from one model
    )


def load_teacher(path: str, where: modeling.Placement):
    """The teacher, frozen, unquantized, in the student's compute dtype on its device (TRL's
    loss needs both output layers on one device)."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=where.dtype,
                                                   device_map={"": where.device})
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def train_worker(job: TrainJob) -> dict:
    from peft import PeftModel
    from trl import DistillationTrainer

    from students.callbacks import MetricsLogger, install

    peak = memory.PeakMemory().start()
    cfg = job.cfg
    opd = cfg.opd
    where = modeling.placement(cfg.student)
    rank, world_size = world()
    tokenizer = modeling.load_tokenizer(job.base_path)
    sft_budget = (read_json(job.paths.train_summary("sft")) or {}).get("prompt_budget")
    fitter = prompt_fitter(cfg, tokenizer, sft_budget)
    chats = prompt_chats(Path(job.data_path), fitter, opd.max_new_tokens)
    heldout = (prompt_chats(job.paths.test_prompts, fitter, 0, limit=opd.heldout_prompts)
               if opd.heldout_prompts and job.paths.test_prompts.is_file() else [])
    # The prompt's chat with its generation prompt, and every token the student may sample.
    longest = opd.max_new_tokens + memory.longest_chat(tokenizer, chats, generation_prompt=True)
    args = trl_args(job, where, longest)
    base = modeling.load_base(job.base_path, cfg.student, where)
    policy = PeftModel.from_pretrained(base, job.init_adapter, is_trainable=True)
    teacher = load_teacher(job.teacher_path, where)
    kl_before = heldout_reverse_kl(policy, teacher, tokenizer, heldout, opd.max_new_tokens)

    trainer = DistillationTrainer(
        model=policy,
        teacher_model=teacher,
        args=args,
        train_dataset=data.to_dataset([{"example_id": str(i), "prompt": c}
                                       for i, c in enumerate(chats)]),
        processing_class=tokenizer,
    )
    modeling.keep_adapter_dtype(trainer.model, where)
    logger = MetricsLogger(job.metrics_path, "opd", world_size)
    install(trainer, logger)

    resume = last_checkpoint(job.checkpoints) if opd.resume else None
    # Read now: checkpoint rotation may delete this folder during training.
    resumed_from = checkpoint_step(resume) if resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    kl_after = heldout_reverse_kl(trainer.model, teacher, tokenizer, heldout, opd.max_new_tokens)

    steps = trainer.state.global_step
    ran = steps - (resumed_from or 0)
    summary = {
        "heldout_reverse_kl_before": kl_before,
        "heldout_reverse_kl_after": kl_after,
        "train_loss": round(result.training_loss, 4),
        "steps": steps,
        # prompt + sampled tokens of every step: what the teacher scored (and the student trained on)
        "train_tokens": int(trainer.state.num_input_tokens_seen or 0),
        "seconds_per_step": round(seconds / ran, 2) if ran > 0 else None,
        "resumed_from_step": resumed_from,
        "prompts": len(chats),
        "heldout_prompts": len(heldout),
        "prompt_budget": fitter.budget,
        "seconds": round(seconds, 2),
        "world_size": world_size,
        "device": where.device.split(":")[0],
        "dtype": where.dtype_name,
        "quantization": cfg.student.quantization,
        "teacher": cfg.teacher.model,
        "beta": opd.beta,
        "longest_row_tokens": longest,
        "micro_batch": args.per_device_train_batch_size,
        "grad_accum_steps": args.gradient_accumulation_steps,
        **peak.summary(),
        "adapter": str(job.adapter_dir),
    }
    if rank == 0:
        trainer.model.save_pretrained(str(job.adapter_dir))
        tokenizer.save_pretrained(str(job.adapter_dir))
        card.write_card(job.adapter_dir, stage="opd", base_model=cfg.student.model,
                        base_path=job.base_path, dataset="prompts/train.parquet",
                        dataset_sha256=job.data_sha256, config=job.config, metrics=summary,
                        tags=job.tags, parent=job.init_adapter)
    write_summary(job, summary)
    return summary
