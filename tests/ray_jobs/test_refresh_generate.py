"""A refresh with the real teacher stage (vLLM on the CPU, in the session's Ray): the teacher
is called for the new prompts and nothing else. The first run's generation and the training
stages are stand-ins (see refresh_helpers) because only the refresh's generation is under test."""

from __future__ import annotations


import pyarrow.parquet as pq
import pytest
from refresh_helpers import Runner, first_run, ids, make_config, write_jsonl

from distill.core.messages import text_id
from distill import refresh as R

pytestmark = pytest.mark.slow

REVIEWS = ["a gripping, beautifully shot thriller", "dull and far too long",
           "a warm, funny delight", "the plot makes no sense at all",
           "one of the best films of the year", "painfully unfunny", "charming performances",
           "a boring mess", "smart, moving and true", "i walked out after an hour"]
NEW = ["an instant classic", "lifeless and predictable", "tender and wise"]


def test_refresh_runs_the_real_teacher_on_new_prompts_only(tmp_path, ray_local):
    src = tmp_path / "prompts"
    write_jsonl(src / "a.jsonl", [{"text": t, "label": ["positive", "negative"][i % 2]}
                                  for i, t in enumerate(REVIEWS)])
    cfg = make_config(
        tmp_path, src, prompts={"test_size": 4},
        teacher={"model": "packaged:smollm2-135m-instruct", "max_model_len": 256,
                 "batch_size": 4},
        generate={"n": 1, "max_tokens": 2, "temperature": 0.0, "structured_output": "choice"},
        ray={"num_cpus": 2})
    first_run(cfg, Runner(accuracy=0.5))
    write_jsonl(src / "b.jsonl", [{"text": t, "label": "positive"} for t in NEW])

    runner = Runner(accuracy=0.6, real=("prompts", "generate", "curate"))
    result = R.refresh(cfg, runner)

    assert result.version == "v0001" and result.new_prompts == 3
    data = cfg.output_dir / "refresh" / "v0001" / "data"
    rows = [r for f in sorted((data / "generate" / "shards").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert {r["example_id"] for r in rows} == {text_id(t) for t in NEW}
    assert all(r["backend"] == "vllm" and r["model"] == "packaged:smollm2-135m-instruct"
               for r in rows)
    assert all(r["completion"] in ("positive", "negative") for r in rows)  # structured choice
    assert ids(data / "prompts" / "train.parquet") == {text_id(t) for t in NEW}
