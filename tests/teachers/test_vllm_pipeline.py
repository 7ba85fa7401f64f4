"""The generate stage end to end: real vLLM (CPU) inside a real local Ray Data actor pool."""

from __future__ import annotations

import json

import pytest

from teachers.generate import run_generate
from teacher_helpers import LINEAGE, REVIEWS, make_run, read_rows

TOO_LONG = "an endless review " * 200  # ~600 tokens, max_model_len is 256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generated(ray_module, tmp_path_factory):
    texts = REVIEWS[:6] + [TOO_LONG] + REVIEWS[6:12]
    run = make_run(tmp_path_factory.mktemp("gen"), n=2, texts=texts,
                   generate={"logprobs": 2})
    summary = run_generate(run)
    return run, summary


def test_n_samples_land_in_parquet_with_every_lineage_field(generated):
    run, summary = generated
    rows = read_rows(run)
    assert len(rows) == 12 * 2 and summary["completions"] == 24 and summary["prompts"] == 12
    for r in rows:
        assert set(LINEAGE) <= set(r)
        assert all(r[k] is not None for k in LINEAGE if k != "label")
        assert r["row_id"] == f"{r['prompt_id']}-{r['sample_index']}"
        assert r["backend"] == "vllm" and r["model"] == "packaged:smollm2-135m-instruct"
        assert json.loads(r["sampling"])["n"] == 2
        assert json.loads(r["messages"])[-1]["content"].endswith(r["text"])
        assert r["prompt_tokens"] > 10 and 0 < r["completion_tokens"] <= 4
        assert r["finish_reason"] in ("stop", "length") and r["latency_s"] > 0
        assert len(json.loads(r["logprobs"])) == r["completion_tokens"]
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert all(sorted(x["sample_index"] for x in v) == [0, 1] for v in by_prompt.values())
    # Per-row seeds: sample i of a prompt uses the prompt's seed + i.
    for v in by_prompt.values():
        seeds = sorted(x["seed"] for x in v)
        assert seeds[1] == seeds[0] + 1
    assert len({v[0]["seed"] for v in by_prompt.values()}) == 12


def test_overlong_prompt_is_quarantined_and_the_rest_complete(generated):
    run, summary = generated
    errors = [json.loads(x) for x in (run.dir / "generate" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and summary["errors"] == 1
    assert errors[0]["reason"].startswith("prompt_too_long")
    assert errors[0]["text_chars"] == len(TOO_LONG)
    assert errors[0]["prompt_id"] not in {r["prompt_id"] for r in read_rows(run)}


def test_summary_and_manifest(generated):
    run, summary = generated
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in read_rows(run))
    assert summary["tokens_per_s"] > 0 and summary["wall_s"] > 0
    assert summary["est_cost_usd"] == pytest.approx(2.0 * summary["wall_s"] / 3600, rel=0.01)
    teacher = json.loads(run.manifest_path.read_text())["models"]["teacher"]
    assert teacher["ref"] == "packaged:smollm2-135m-instruct" and teacher["kind"] == "packaged"


def test_rerun_of_a_finished_stage_generates_nothing(generated):
    run, _ = generated
    before = read_rows(run)
    again = run_generate(run)
    assert again["prompts_this_run"] == 0 and again["resumed_prompts"] == 13
    assert read_rows(run) == before and again["errors"] == 1
