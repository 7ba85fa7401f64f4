"""The adapter's model card: README.md with YAML front matter (base model, data hash, config,
metrics; the exported card also the run's tags: run id, config hash, teacher and its source
hash, generation and training settings, package versions), so an adapter folder found on its
own says where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_card(folder: Path, *, stage: str, base_model: str, base_path: str, dataset: str,
               dataset_sha256: str, config: dict, metrics: dict, parent: str | None = None,
               tags: dict | None = None) -> Path:
    front = {
        "library_name": "peft",
        "base_model": base_model,
        "tags": ["distill", stage, "lora"],
        "distill": {
            "stage": stage,
            "base_model_path": base_path,
            "dataset": dataset,
            "dataset_sha256": dataset_sha256,
            "parent_adapter": parent,
            **({"run": tags} if tags else {}),
        },
    }
    sections = {
        "student": config.get("student"),
        stage: config.get(stage),
        "task": {"name": config["task"]["name"], "type": config["task"]["type"]},
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {config['run_name']}: {stage.upper()} adapter",
        "",
        f"LoRA adapter for `{base_model}`, trained by distill ({stage}"
        + (f", starting from `{parent}`" if parent else "") + ").",
        "",
        f"- dataset: `{dataset}` (sha256 `{dataset_sha256}`)",
        *(_provenance(tags) if tags else []),
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in metrics.items() if not isinstance(v, (dict, list))],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(sections, indent=2, default=str),
        "```",
        "",
    ]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines))
    return path


def _provenance(tags: dict) -> list[str]:
    teacher, gen, student = tags["teacher"], tags["generation"], tags["student"]
    return [
        f"- run: `{tags['run_id']}`, config hash `{tags['config_hash']}`",
        f"- training data: `{tags['dataset']['path']}` (sha256 `{tags['dataset']['sha256']}`)",
        f"- teacher: `{teacher['model']}` ({teacher['backend']}; source sha256 "
        f"`{teacher['source_sha256']}`), sampled with n={gen['n']}, temperature "
        f"{gen['temperature']}, top_p {gen['top_p']}, max_tokens {gen['max_tokens']}, seed "
        f"{gen['seed']}, structured output {gen['structured_output']}",
        f"- student: `{student['base']}`, quantization {student['quantization']}, LoRA r "
        f"{student['lora']['r']} / alpha {student['lora']['alpha']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in tags["packages"].items()),
    ]


def read_card(folder: Path) -> dict:
    """The card's front matter."""
    text = (Path(folder) / "README.md").read_text()
    _, front, _ = text.split("---", 2)
    return yaml.safe_load(front)
