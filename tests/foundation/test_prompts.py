"""Prompts: the teacher's full prompt, the student's short one, and its system message."""

from __future__ import annotations

from distill.core.config import TaskConfig
from distill.core.messages import student_messages, teacher_messages

TASK = dict(name="s", type="classification", labels=["positive", "negative"],
            instruction="Is the sentiment of this review positive or negative? Answer in one word.",
            student_instruction="Sentiment:", template="{instruction}\n\nReview: {input}")


def test_student_prompt_is_shorter_and_its_system_message_replaces_the_default(student_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_path)

    def n_tokens(messages) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    default = TaskConfig(**TASK)
    empty = TaskConfig(**TASK, student_system_prompt="")
    text = "A thrilling, tender film."
    assert student_messages(default, text) == [
        {"role": "user", "content": "Sentiment:\n\nReview: A thrilling, tender film."}]
    assert student_messages(empty, text)[0] == {"role": "system", "content": ""}
    # SmolLM2's template adds its own system prompt when none is given; an empty one is shorter.
    assert n_tokens(student_messages(empty, text)) < n_tokens(student_messages(default, text)) \
        < n_tokens(teacher_messages(default, text))
