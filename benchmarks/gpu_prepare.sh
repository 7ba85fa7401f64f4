#!/usr/bin/env bash
# Here, before a device call: put into .whl/ (git-ignored) what benchmarks/gpu_check.sh needs
# on the lent GPU machine and its image lacks: the Python 3.12 wheels of the training stack at
# the versions this project runs with here, and the SmolLM2 tokenizer (the random students
# use it; the machine has no hub and no packaged models). About 50 MB: the device call's tree
# limit is 64 MiB, so carry .whl and nothing else big.
#
#   bash benchmarks/gpu_prepare.sh            # then: run(command="bash benchmarks/gpu_check.sh sft",
#                                             #          carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# Not in the device image (device KINDS.md), or there at another version.
PACKAGES="trl peft bitsandbytes datasets dill multiprocess pydantic pydantic_core annotated_types
typing_inspection typing_extensions"
pins=()
for name in $PACKAGES; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "gpu_prepare: $name is not installed in $PY's environment" >&2; exit 2; }
    pins+=("$name==$version")
done

platforms=()
for n in 39 38 37 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do
    platforms+=(--platform "manylinux_2_${n}_x86_64")
done
rm -rf .whl && mkdir -p .whl/tokenizer
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${pins[@]}"

tokenizer=$("$PY" -c "from distill.core.models import resolve
print(resolve('packaged:smollm2-135m-instruct').path)")
for f in tokenizer.json tokenizer_config.json chat_template.jinja config.json; do
    [ -f "$tokenizer/$f" ] && cp "$tokenizer/$f" .whl/tokenizer/
done
grep -qx '/.whl/' .gitignore || echo "gpu_prepare: .whl/ must be git-ignored (carry it)" >&2
ls .whl
du -sh .whl
