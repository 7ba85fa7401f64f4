"""OPD stage: on-policy distillation of the SFT student with TRL's distillation trainers.

The student (4-bit base + the SFT adapter, trainable) samples answers to the training prompts;
the teacher scores every sampled token and the adapter is trained on the per-token divergence
(`opd.beta`: 1 = reverse KL). `opd.teacher_scoring` says where the teacher runs:
  in_process  loaded as a transformers model next to the student: its full next-token
              distribution, the exact divergence (TRL's DistillationTrainer);
  server      `vllm serve` (started here, on the teacher's engine settings) or teacher.endpoint
              (a vLLM-compatible server): prompt logprobs of the sampled sequences, so the loss
              sees the teacher's top-k only (TRL's experimental ServerDistillationTrainer). The
              teacher's weights never enter the training process (a tensor-parallel teacher works).
Both need one vocabulary for both models, checked before any weights load (`check_pair`). A
pair with different tokenizers is refused by name (`opd.cross_tokenizer: refuse`, the default,
or a served teacher), or, opted in (`gold`, the teacher in process), goes to TRL's experimental
GOLDTrainer (JSD where both vocabularies hold a token, ULD on the rest; mixed results here).
Nothing falls back to SFT.
Reads `prompts/train.parquet` (and `prompts/test.parquet` for the held-out KL); writes
`opd/checkpoints/`, `opd/adapter/`, `opd/metrics.jsonl`, `opd/summary.json`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from distill.core.config import RunConfig
from distill.core.errors import ConfigError, StageNotReadyError
from distill.core.io import file_sha256, read_json
from distill.core.messages import Message
from distill.core.models import resolve
from distill.core.rundir import Run, run_tags
from students import card, data, memory, modeling
from students.fit import TEMPLATE_SLACK, InputFitter
from students.modeling import training_base
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
    served = cfg.opd.teacher_scoring == "server"
    check_endpoint(cfg, served)
    base = training_base(cfg, run.paths)
    teacher = resolve(cfg.teacher.model)
    vocab, cross = check_pair(cfg, teacher.path, base.path)  # before the inputs
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
        cross_tokenizer=cross,
    )
    if not served:
        return {**run_job(run, job, train_worker), "vocab_size": vocab}
    # The server lives as long as the training job; TRL's client wants the root, not /v1.
    with teacher_server(cfg, job.stage_dir / "vllm_teacher.log") as url:
        job = replace(job, teacher_url=url.rstrip("/").removesuffix("/v1"))
        summary = run_job(run, job, train_worker)
    return {**summary, "vocab_size": vocab}


@contextmanager
def teacher_server(cfg: RunConfig, log: Path) -> Iterator[str]:
    """The scoring server's URL: teacher.endpoint, or `vllm serve` on the teacher's engine
    settings (tensor parallelism included) for as long as training runs."""
    from teachers.factory import serve_flags, teacher_source, vllm_engine_kwargs
    from teachers.serve import vllm_server

    if cfg.teacher.is_endpoint:
        yield cfg.teacher.endpoint.base_url
        return
    from teachers.vllm_engine import CPU_DTYPE, has_gpu

    engine_kwargs = vllm_engine_kwargs(cfg.teacher) if cfg.teacher.backend == "vllm" else {}
    # Its logprobs are the training signal: on a CPU they stay float32, as in-process scoring,
    # not the bf16 that `vllm serve` gets there for latency.
    dtype = CPU_DTYPE if cfg.teacher.dtype == "auto" and not has_gpu() else cfg.teacher.dtype
    with vllm_server(teacher_source(cfg.teacher).path, served_name="teacher",
                     max_model_len=cfg.teacher.max_model_len, dtype=dtype,
                     extra_args=serve_flags(engine_kwargs), log_path=log) as url:
        yield url


def check_endpoint(cfg: RunConfig, served: bool) -> None:
    """An API teacher can score only as a server, and only one TRL's client can talk to."""
    if not cfg.teacher.is_endpoint:
        return
    if not served:
        raise ConfigError("teacher.backend", [
            "opd with teacher_scoring: in_process needs the teacher's weights in the training "
            "process; an API teacher has none: set opd.teacher_scoring: server (a vLLM-compatible "
            "endpoint that returns prompt logprobs), name a local or hub teacher, or set "
            "opd.enabled: false"])
    if cfg.teacher.endpoint.api_key_env is not None:
        raise ConfigError("teacher.endpoint.api_key_env", [
            "opd's served scoring talks to the teacher through TRL's VLLMClient, which sends no "
            "API key (and needs vLLM's /health and prompt_logprobs, which hosted APIs lack): "
            "point teacher.endpoint at a `vllm serve` without --api-key"])


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


def check_pair(cfg: RunConfig, teacher_path: str, student_path: str) -> tuple[int, bool]:
    """The student's vocabulary size, and whether the pair needs the cross-tokenizer path
    (GOLD); refuses (ConfigError) a pair with different tokenizers or output layers where
    that path is off or cannot run."""
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
    if why is None:
        return len(student_vocab), False
    if cfg.opd.cross_tokenizer == "gold" and cfg.opd.teacher_scoring == "in_process":
        return len(student_vocab), True
    raise ConfigError("teacher.model", [refusal(cfg, why)])


GOLD_MEASURED = (
    "TRL's experimental cross-tokenizer GOLD trainer, tried here on the packaged Qwen2.5 -> "
    "SmolLM2 pair (benchmarks/results/opd_gold_attempt.md): ULD alone collapsed the student to "
    "one answer while its loss fell; the hybrid loss helped from a fresh LoRA (teacher NLL of "
    "the student's answers 0.43 -> 0.04 nats/char) but made a noisy SFT-like student worse in "
    "distill's own test (0.24 -> 0.43), so it is not on by default")


def refusal(cfg: RunConfig, why: str) -> str:
    if cfg.opd.cross_tokenizer == "refuse":
        because = (f"opd.cross_tokenizer is refuse; gold would use {GOLD_MEASURED} (opt in "
                   "with opd.cross_tokenizer: gold, teacher in process)")
    else:
        because = ("the cross-tokenizer path (GOLD) needs the teacher's full logits in the "
                   "training process, and opd.teacher_scoring is server (prompt logprobs of "
                   "the student's tokens mean nothing to another tokenizer): set "
                   "opd.teacher_scoring: in_process")
    return (
        f"opd: teacher {cfg.teacher.model} and student {cfg.student.model} cannot be distilled "
        f"on-policy here: {why}; {because}. Same-vocabulary OPD needs a teacher and student of "
        f"one family (e.g. {'; '.join(WORKING_PAIRS)}); or set opd.enabled: false (SFT and DPO "
        "work with any pair). Nothing falls back to SFT.")


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


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """The model in eval mode (no dropout) for a held-out measure, back in its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def greedy_answers(student, tokenizer, chats: list[list[Message]], max_new_tokens: int):
    """(chat, prompt + greedy answer ids, prompt length) per chat that got an answer token."""
    import torch

    device = next(student.parameters()).device
    answers = []
    with torch.no_grad():
        for chat in chats:
            text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
            n = prompt["input_ids"].shape[1]
            out = student.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False,
                                   use_cache=True, pad_token_id=tokenizer.pad_token_id)
            if out.shape[1] > n:
                answers.append((chat, out, n))
    return answers


def student_logprobs(student, ids, n: int):
    """The student's log-probabilities at the positions that predict ids[n:] (one row each)."""
    import torch

    with torch.no_grad():
        return torch.log_softmax(student(input_ids=ids).logits[0, n - 1:-1].float(), -1)


def heldout_reverse_kl(student, teacher, tokenizer, chats: list[list[Message]],
                       max_new_tokens: int) -> float | None:
    """Mean per-token KL(student || teacher) in nats, over the full vocabulary, at every token
    of the student's greedy answer to each chat (the quantity OPD with beta=1 minimises, on
    prompts it never trained on). None without any answer token."""
    import torch

    total, tokens = 0.0, 0
    with eval_mode(student):
        for _, out, n in greedy_answers(student, tokenizer, chats, max_new_tokens):
            s = student_logprobs(student, out, n)
            with torch.no_grad():
                t = torch.log_softmax(teacher(input_ids=out.to(teacher.device)).logits[0, n - 1:-1]
                                      .float().to(s.device), -1)
            total += (s.exp() * (s - t)).sum().item()
            tokens += out.shape[1] - n
    return round(total / tokens, 4) if tokens else None


HELDOUT_TOP_K = 20  # vLLM's default --max-logprobs


def heldout_topk_reverse_kl(student, client, tokenizer, chats: list[list[Message]],
                            max_new_tokens: int) -> float | None:
    """The served teacher's version of `heldout_reverse_kl`: the teacher returns only its top
    20 logprobs per token, so the KL is taken over those tokens (plus the answer's own token)
    and one bucket for the rest. Merging tokens into a bucket never raises a KL, so this is a
    lower bound of the full-vocabulary KL (tight when the teacher's top 20 hold its mass)."""
    import torch

    with eval_mode(student):  # dropout off for the sampling and the scored logprobs
        answers = greedy_answers(student, tokenizer, chats, max_new_tokens)
        if not answers:
            return None
        scored = client.get_sequence_logprobs(
            sequences=[out[0].tolist() for _, out, _ in answers],
            prompt_lengths=[n for _, _, n in answers], top_logprobs=HELDOUT_TOP_K)
        total, tokens = 0.0, 0
        for i, (_, out, n) in enumerate(answers):
            s = student_logprobs(student, out, n)
            for pos, (top_lp, top_ids, actual) in enumerate(zip(
                    scored["logprobs"][i], scored["logprob_token_ids"][i],
                    scored["actual_logprobs"][i])):
                support = {t: lp for t, lp in zip(top_ids, top_lp) if lp > float("-inf")}
                support.setdefault(int(out[0, n + pos]), actual[0])
                t_lp = torch.tensor(list(support.values()))
                s_lp = s[pos, list(support)].cpu()
                total += bucket_kl(s_lp, t_lp)
                tokens += 1
    return round(total / tokens, 4) if tokens else None


def heldout_teacher_nll(student, teacher, tokenizer, teacher_tokenizer,
                        chats: list[list[Message]], max_new_tokens: int) -> float | None:
    """For a pair with different tokenizers, where no per-token KL exists: the teacher's
    negative log-likelihood (nats) of the student's greedy answer text, re-tokenized by the
    teacher after the teacher's own chat template, per answer character (lower: the student
    says more what the teacher would say). None without any answer."""
    import torch

    total, chars = 0.0, 0
    with eval_mode(student):
        answers = greedy_answers(student, tokenizer, chats, max_new_tokens)
    for chat, out, n in answers:
        answer = tokenizer.decode(out[0, n:], skip_special_tokens=True)
        if not answer.strip():
            continue
        prompt = teacher_tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                       tokenize=False)
        p = teacher_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = teacher_tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a], device=teacher.device)
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
        total -= logp.gather(-1, ids[0, len(p):, None]).sum().item()
        chars += len(answer)
    return round(total / chars, 4) if chars else None


def bucket_kl(s_lp, t_lp) -> float:
    """KL(s || t) over the given tokens plus one bucket holding each side's remaining mass."""
    import torch

    def with_tail(lp):
        rest = (1 - lp.exp().sum()).clamp_min(1e-12)
        return torch.cat([lp, rest.log()[None]])

    s_all, t_all = with_tail(s_lp), with_tail(t_lp)
    return float((s_all.exp() * (s_all - t_all)).sum())


# --- training ---------------------------------------------------------------------------------


def trl_args(job: TrainJob, where: modeling.Placement, longest: int):
    """`longest`: tokens of the longest prompt + sampled answer (the micro-batch is chosen from
    it; TRL samples the whole batch at once and trains on it micro-batch by micro-batch)."""
    from trl import DistillationConfig
    from trl.experimental.server_distillation import ServerDistillationConfig

    cfg = job.cfg
    opd = cfg.opd
    batch = memory.batch_args(opd, longest, on_gpu=where.on_gpu)
    common = dict(
        **common_args(job, opd, modeling.precision_args(where), batch),
        beta=opd.beta,
        temperature=opd.temperature,
        max_completion_length=opd.max_new_tokens,
        disable_dropout=True,  # the student's samples and its scored logits come from one model
    )
    if job.cross_tokenizer:
        return gold_args(job, common)
    if job.teacher_url is None:
        return DistillationConfig(**common)
    # loss_add_tail: the mass outside the teacher's top-k is one more bucket, so a top-1
    # support still has a divergence to minimise.
    return ServerDistillationConfig(**common, teacher_model_server_url=job.teacher_url,
                                    loss_top_k=opd.server_top_k, loss_add_tail=True)


def gold_args(job: TrainJob, common: dict):
    """TRL's GOLD (cross-tokenizer) arguments: fully on-policy like DistillationTrainer
    (lmbda 1), the hybrid loss (JSD where both vocabularies hold the token, ULD on the rest:
    ULD alone collapsed the student here, benchmarks/results/opd_gold_attempt.md)."""
    from trl.experimental.gold import GOLDConfig

    return GOLDConfig(**common, lmbda=1.0, top_p=1.0, use_uld_loss=True, use_extended_uld=True,
                      uld_use_hybrid_loss=True, teacher_tokenizer_name_or_path=job.teacher_path,
                      max_length=job.cfg.student.max_seq_len)


def make_trainer(job: TrainJob, where: modeling.Placement, policy, tokenizer, chats, args):
    """TRL's trainer for the scoring mode, and what the held-out measure scores with: the
    in-process teacher, or the client of the served one."""
    from trl import DistillationTrainer
    from trl.experimental.server_distillation import ServerDistillationTrainer

    dataset = data.to_dataset([{"example_id": str(i), "prompt": c} for i, c in enumerate(chats)])
    if job.teacher_url is not None:
        trainer = ServerDistillationTrainer(model=policy, args=args, train_dataset=dataset,
                                            processing_class=tokenizer)
        return trainer, trainer.teacher_client
    teacher = load_teacher(job.teacher_path, where)
    if job.cross_tokenizer:
        from transformers import AutoTokenizer
        from trl.experimental.gold import GOLDTrainer

        # GOLD reads chats as "messages" ending in an answer turn; with lmbda 1 every answer
        # is the student's own sample, so this placeholder is never trained on.
        gold_data = data.to_dataset([{"messages": [*c, {"role": "assistant", "content": "."}]}
                                     for c in chats])
        trainer = GOLDTrainer(model=policy, teacher_model=teacher, args=args,
                              train_dataset=gold_data, processing_class=tokenizer)
        return trainer, (teacher, AutoTokenizer.from_pretrained(job.teacher_path))
    trainer = DistillationTrainer(model=policy, teacher_model=teacher, args=args,
                                  train_dataset=dataset, processing_class=tokenizer)
    return trainer, teacher


def heldout_kl(job: TrainJob, student, scorer, tokenizer, chats) -> float | None:
    n = job.cfg.opd.max_new_tokens
    if job.cross_tokenizer:
        return heldout_teacher_nll(student, scorer[0], tokenizer, scorer[1], chats, n)
    if job.teacher_url is not None:
        return heldout_topk_reverse_kl(student, scorer, tokenizer, chats, n)
    return heldout_reverse_kl(student, scorer, tokenizer, chats, n)


def load_teacher(path: str, where: modeling.Placement):
    """The teacher, frozen, unquantized, in the student's compute dtype on its device (TRL's
    loss needs both output layers on one device)."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=where.dtype,
                                                   device_map={"": where.device})
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def heldout_measure(job: TrainJob) -> str:
    """What the summary's heldout_reverse_kl_* hold for this mode."""
    if job.cross_tokenizer:
        return "teacher NLL per answer character (no per-token KL across tokenizers)"
    return "teacher top-20 + tail (lower bound)" if job.teacher_url else "full vocabulary"


def train_worker(job: TrainJob) -> dict:
    from peft import PeftModel

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
    trainer, scorer = make_trainer(job, where, policy, tokenizer, chats, args)
    kl_before = heldout_kl(job, policy, scorer, tokenizer, heldout)
    modeling.keep_adapter_dtype(trainer.model, where)
    logger = MetricsLogger(job.metrics_path, "opd", world_size)
    install(trainer, logger)

    resume = last_checkpoint(job.checkpoints) if opd.resume else None
    # Read now: checkpoint rotation may delete this folder during training.
    resumed_from = checkpoint_step(resume) if resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    kl_after = heldout_kl(job, trainer.model, scorer, tokenizer, heldout)

    steps = trainer.state.global_step
    ran = steps - (resumed_from or 0)
    summary = {
        "heldout_reverse_kl_before": kl_before,
        "heldout_reverse_kl_after": kl_after,
        "heldout_measure": heldout_measure(job),
        "cross_tokenizer": job.cross_tokenizer,
        "teacher_scoring": opd.teacher_scoring,
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
        **memory.batch_summary(longest, args),
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
