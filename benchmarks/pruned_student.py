"""A same-vocabulary student for on-policy distillation on this CPU: the packaged teacher
(Qwen2.5-Coder-0.5B-Instruct) with some of its decoder layers removed.

The two packaged models have different tokenizers, so OPD refuses them (students/opd.py). A
layer-pruned copy of the teacher shares its vocabulary and starts measurably worse than it:
the setting of pruning-then-distilling (Minitron, ShortGPT), where the distillation heals the
cut. Writes a plain Hugging Face folder that `student.model` can name. (`prune.layers` does this
inside a run, choosing the block itself: students/prune.py.)

    python benchmarks/pruned_student.py --drop 8:20 --out runs/_models/qwen-pruned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.core.models import resolve
from students.prune import decoder_layers, load, remove_layers, save_pruned


def prune(source: Path, out: Path, drop: range) -> int:
    """Copy the model at `source` to `out` without the decoder layers in `drop` (renumbered);
    returns the layers kept. The same code as the prune stage, with the block given."""
    model, tokenizer = load(str(source))
    total = len(decoder_layers(model))
    remove_layers(model, drop)
    save_pruned(model, tokenizer, out, {"source": str(source), "layers_before": total,
                                        "dropped": [drop.start, drop.stop - 1]})
    return total - len(drop)


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
