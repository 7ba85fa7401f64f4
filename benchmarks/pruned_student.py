"""A same-vocabulary student for on-policy distillation on this CPU: the packaged teacher
(Qwen2.5-Coder-0.5B-Instruct) with some of its decoder layers removed.

The two packaged models have different tokenizers, so OPD refuses them (students/opd.py). A
layer-pruned copy of the teacher shares its vocabulary and starts measurably worse than it:
the setting of pruning-then-distilling (Minitron, ShortGPT), where the distillation heals the
cut. Writes a plain Hugging Face folder that `student.model` can name.

    python benchmarks/pruned_student.py --drop 8:20 --out runs/_models/qwen-pruned
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from distill.core.models import resolve

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def prune(source: Path, out: Path, drop: range) -> int:
    """Copy the model at `source` to `out` without the decoder layers in `drop` (renumbered);
    returns the layers kept."""
    config = json.loads((source / "config.json").read_text())
    total = config["num_hidden_layers"]
    keep = [i for i in range(total) if i not in drop]
    new_index = {old: new for new, old in enumerate(keep)}
    tensors = {}
    for name, tensor in load_file(str(source / "model.safetensors")).items():
        m = LAYER.match(name)
        if m is None:
            tensors[name] = tensor
        elif int(m.group(1)) in new_index:
            tensors[f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}"] = tensor
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name not in ("model.safetensors", "config.json", "distill_source.json"):
            shutil.copy2(f, out / f.name)
    config["num_hidden_layers"] = len(keep)
    if "layer_types" in config:
        config["layer_types"] = [config["layer_types"][i] for i in keep]
    config["max_window_layers"] = min(config.get("max_window_layers", len(keep)), len(keep))
    config["_pruned_from"] = {"source": str(source), "dropped_layers": [drop.start, drop.stop]}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--drop", default="8:20", help="START:STOP, the layers to remove")
    parser.add_argument("--out", type=Path, default=Path("runs/_models/qwen-pruned"))
    args = parser.parse_args()
    start, stop = (int(x) for x in args.drop.split(":"))
    kept = prune(Path(resolve(args.model).path), args.out, range(start, stop))
    print(f"{args.out}: {kept} layers kept (dropped {start}..{stop - 1})")


if __name__ == "__main__":
    main()
