"""Chat messages for the teacher (full instruction, few-shot) and the student (short prompt).

Both sides render from the same task config, so training, eval and bench agree on the exact
prompt a model sees.
"""

from __future__ import annotations

import hashlib
import json

from distill.core.config import TaskConfig

Message = dict[str, str]


def _user_turn(task: TaskConfig, instruction: str, text: str) -> str:
    return task.template.format(instruction=instruction, input=text).strip()


def teacher_messages(task: TaskConfig, text: str, few_shot: bool = True) -> list[Message]:
    """System prompt, few-shot turns, then the instruction with the input.

    `few_shot=False` gives the zero-shot prompt an untuned model is evaluated with.
    """
    messages: list[Message] = []
    if task.system_prompt:
        messages.append({"role": "system", "content": task.system_prompt})
    for shot in task.few_shot if few_shot else ():
        messages.append({"role": "user", "content": _user_turn(task, task.instruction, shot.input)})
        messages.append({"role": "assistant", "content": shot.output})
    messages.append({"role": "user", "content": _user_turn(task, task.instruction, text)})
    return messages


def student_messages(task: TaskConfig, text: str) -> list[Message]:
    """The distilled student needs only a short instruction and no few-shot examples."""
    instruction = task.student_instruction or task.instruction
    user: Message = {"role": "user", "content": _user_turn(task, instruction, text)}
    if task.student_system_prompt is None:  # the chat template's default system prompt
        return [user]
    return [{"role": "system", "content": task.student_system_prompt}, user]


def template_version(task: TaskConfig) -> str:
    """Hash of everything that shapes the teacher prompt; part of every generated row's id."""
    blob = json.dumps(
        {
            "system": task.system_prompt,
            "instruction": task.instruction,
            "template": task.template,
            "few_shot": [s.model_dump() for s in task.few_shot],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def text_id(text: str) -> str:
    """Stable id of a source text (whitespace-normalised)."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]
