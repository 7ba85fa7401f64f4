"""TRL's cross-tokenizer on-policy distillation (experimental GOLD, ULD loss) on the packaged
pair: teacher packaged:qwen2.5-coder-0.5b-instruct (Qwen tokenizer), student
packaged:smollm2-135m-instruct (SmolLM2 tokenizer), plain LoRA on the CPU.

Measured before and after a few fully on-policy steps (lmbda=1), on held-out prompts:
  * uld_loss: GOLD's own loss (what it optimises) on the student's greedy answers;
  * teacher_nll_per_char: the teacher's negative log-likelihood of the student's greedy answer
    text (re-tokenized by the teacher), per character: a tokenizer-free reading of "does the
    student now say what the teacher would say" (lower is closer);
  * label_accuracy: whether the answer names the review's label (what the teacher gets right);
plus seconds per step and peak memory (RSS). Two losses: `uld` (ULD alone) and `hybrid` (GOLD's
JSD on tokens both vocabularies share, ULD on the rest).

    python benchmarks/opd_gold_attempt.py --steps 8 --out benchmarks/results/opd_gold_attempt.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from distill.core.models import resolve
from students.memory import own_peak_rss_mb

SUBJECTS = ["The film", "This phone", "The hotel", "Our dinner", "The concert", "This book",
            "The service", "The update", "The course", "This game"]
GOOD = ["wonderful and moving", "fast, reliable and well made", "a delight from start to end",
        "worth every penny", "clean, friendly and quiet"]
BAD = ["a waste of time", "slow and broken", "rude and careless", "a total letdown",
       "noisy, dirty and overpriced"]


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Review: {rng.choice(SUBJECTS)} is {rng.choice(GOOD if i % 2 else BAD)} ({i}). "
            "Is this review positive or negative? Answer in one short sentence."
            for i in range(n)]


def label_accuracy(answers: list[str]) -> float:
    """Share of answers whose first label word is the review's (odd rows are positive): the
    task the teacher solves; a collapsed student scores 0.5."""
    def first_label(text: str) -> str | None:
        low = text.lower()
        hits = [(low.find(w), w) for w in ("positive", "negative") if w in low]
        return min(hits)[1] if hits else None
    right = sum(first_label(a) == ("positive" if i % 2 else "negative")
                for i, a in enumerate(answers))
    return round(right / max(len(answers), 1), 3)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy_answers(model, tok, texts: list[str], max_new: int) -> list[str]:
    model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok.apply_chat_template(chat(text), add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def teacher_nll_per_char(teacher, ttok, texts: list[str], answers: list[str]) -> float:
    total, chars = 0.0, 0
    with torch.no_grad():
        for text, answer in zip(texts, answers):
            if not answer.strip():
                continue
            prompt = ttok.apply_chat_template(chat(text), add_generation_prompt=True, tokenize=False)
            p = ttok(prompt, add_special_tokens=False)["input_ids"]
            a = ttok(answer, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + a])
            logp = torch.log_softmax(teacher(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
            total -= logp.gather(-1, torch.tensor(a)[:, None]).sum().item()
            chars += len(answer)
    return round(total / max(chars, 1), 4)


def uld_loss(trainer, texts: list[str], answers: list[str]) -> float:
    """GOLD's loss (ULD, cross-tokenizer) on the student's own answers: the on-policy loss it
    trains on, on prompts it never saw."""
    rows = [{"messages": chat(t) + [{"role": "assistant", "content": a}]}
            for t, a in zip(texts, answers)]
    batch = trainer._ensure_original_text_fields(trainer.data_collator(rows))
    batch = {k: (v.to(trainer.model.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return round(float(loss), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--losses", nargs="+", default=["uld", "hybrid"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    student_path = resolve("packaged:smollm2-135m-instruct").path
    teacher_path = resolve("packaged:qwen2.5-coder-0.5b-instruct").path
    tok = AutoTokenizer.from_pretrained(student_path)
    ttok = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    teacher.eval().requires_grad_(False)
    train_texts = prompts(args.steps * args.batch, seed=1)
    held = prompts(args.heldout, seed=2)
    teacher_answers = greedy_answers(teacher, ttok, held, args.max_new)
    report = {"teacher": "packaged:qwen2.5-coder-0.5b-instruct",
              "student": "packaged:smollm2-135m-instruct", "steps": args.steps,
              "batch": args.batch, "max_new_tokens": args.max_new, "learning_rate": args.lr,
              "heldout_prompts": len(held),
              "teacher_label_accuracy": label_accuracy(teacher_answers), "variants": []}
    for loss in args.losses:
        torch.manual_seed(0)
        report["variants"].append(attempt(args, loss, student_path, teacher_path, tok, ttok,
                                          teacher, train_texts, held))
        print(json.dumps(report["variants"][-1], indent=2), flush=True)
    report["peak_rss_mb"] = round(own_peak_rss_mb())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def measure(trainer, teacher, tok, ttok, held, max_new) -> dict:
    answers = greedy_answers(trainer.model, tok, held, max_new)
    return {"uld_loss": uld_loss(trainer, held, answers),
            "teacher_nll_per_char": teacher_nll_per_char(teacher, ttok, held, answers),
            "label_accuracy": label_accuracy(answers), "answers": answers[:4]}


def attempt(args, loss, student_path, teacher_path, tok, ttok, teacher, train_texts, held):
    """One GOLD run from the untuned student: `uld` (ULD loss on every token) or `hybrid`
    (JSD where the two vocabularies share a token, ULD elsewhere)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    # lmbda=1: every batch is the student's own sample; the assistant turn here is never used.
    data = Dataset.from_list([{"messages": chat(t) + [{"role": "assistant", "content": "."}]}
                              for t in train_texts])
    gold_args = GOLDConfig(
        output_dir=str(args.out.parent / "gold_tmp"), max_steps=args.steps,
        per_device_train_batch_size=args.batch, learning_rate=args.lr, lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        lmbda=1.0, beta=1.0, temperature=1.0, top_p=1.0, max_completion_length=args.max_new,
        use_uld_loss=True, use_extended_uld=True, uld_use_hybrid_loss=(loss == "hybrid"),
        teacher_tokenizer_name_or_path=teacher_path, max_length=256,
    )
    trainer = GOLDTrainer(model=student, teacher_model=teacher, args=gold_args,
                          train_dataset=data, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    before = measure(trainer, teacher, tok, ttok, held, args.max_new)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    after = measure(trainer, teacher, tok, ttok, held, args.max_new)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    return {"loss": loss, "before": before, "after": after,
            "train_loss": round(result.training_loss, 4),
            "losses": [round(r["loss"], 4) for r in logged],
            "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(args.steps, 1), 2)}


if __name__ == "__main__":
    main()
