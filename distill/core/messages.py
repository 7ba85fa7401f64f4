"""Chat messages for the teacher (full instruction, few-shot) and the student (short prompt).

Both sides render from the same task config, so training, eval and bench agree on the exact
prompt a model sees.
"""

from __future__ import annotations

import hashlib
import json

from distill.core.config import TaskConfig
from distill.core.errors import DataError

Message = dict[str, str]


def encode_input(values: dict[str, str]) -> str:
    """A row's input when the template names several columns: one JSON object, so every stage
    (dedup, the fitter, eval, serving) passes one string and the template gets its fields."""
    return json.dumps(values, ensure_ascii=False)


def input_values(task: TaskConfig, text: str | dict[str, str]) -> dict[str, str]:
    """The template's column values for an input (a plain text when it names only {input})."""
    fields = task.input_fields
    if isinstance(text, dict):
        values = text
    elif fields == ["input"]:
        return {"input": text}
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, dict):
            raise DataError(f"task {task.name!r} reads the columns {fields}: its input must be a "
                            "JSON object with them, not plain text")
    missing = [f for f in fields if not isinstance(values.get(f), str)]
    if missing:
        raise DataError(f"task {task.name!r}: the input has no text for {missing} "
                        f"(the template names {fields})")
    return {f: values[f] for f in fields}


def plain_text(task: TaskConfig, text: str) -> str:
    """The input's words without the JSON around several columns (for similarity and sizes)."""
    return "\n\n".join(input_values(task, text).values())


def _user_turn(task: TaskConfig, instruction: str, text: str | dict[str, str]) -> str:
    return task.template.format(instruction=instruction, **input_values(task, text)).strip()


def teacher_messages(task: TaskConfig, text: str | dict[str, str],
                     few_shot: bool = True) -> list[Message]:
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


def student_messages(task: TaskConfig, text: str | dict[str, str]) -> list[Message]:
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
