"""Fast checks without an engine: ids, shards, cost, structured-output config, API keys."""

from __future__ import annotations

import json

import pytest

from distill.core.config import EndpointConfig, PriceConfig
from distill.core.errors import ConfigError, StageNotReadyError
from teachers.base import SamplingSpec, row_seed
from teachers.cost import billed_units, estimate_cost
from teachers.http_engine import api_key
from teachers.generate import plan_shards, prompt_id, run_generate, sampling_spec
from teacher_helpers import REVIEWS, make_run


def test_prompt_id_changes_with_model_template_text_and_seed():
    base = prompt_id("m", "v1", "text", 0)
    assert base == prompt_id("m", "v1", "text", 0) and len(base) == 16
    assert len({base, prompt_id("m2", "v1", "text", 0), prompt_id("m", "v2", "text", 0),
                prompt_id("m", "v1", "text2", 0), prompt_id("m", "v1", "text", 1)}) == 5


def test_row_seed_is_stable_and_fits_31_bits():
    assert row_seed(7, "abc") == row_seed(7, "abc") != row_seed(8, "abc")
    assert 0 <= row_seed(7, "abc") < 2**31


def test_shards_are_deterministic_and_skip_duplicate_texts(tmp_path):
    run = make_run(tmp_path, texts=REVIEWS[:10] + [REVIEWS[0]])
    first = plan_shards(run, run.cfg.teacher.model)
    again = plan_shards(run, run.cfg.teacher.model)
    assert [s.name for s in first] == [s.name for s in again]
    assert [len(s.rows) for s in first] == [4, 4, 2]  # 10 distinct texts, shard_size 4
    ids = [r["prompt_id"] for s in first for r in s.rows]
    assert len(ids) == len(set(ids)) == 10
    msgs = json.loads(first[0].rows[0]["messages"])
    assert msgs[-1]["role"] == "user" and REVIEWS[0] in msgs[-1]["content"]


def test_missing_prompts_is_stage_not_ready(tmp_path):
    run = make_run(tmp_path)
    (run.dir / "prompts" / "train.parquet").unlink()
    with pytest.raises(StageNotReadyError, match="train.parquet"):
        run_generate(run)


def test_structured_output_settings(tmp_path):
    run = make_run(tmp_path, generate={"structured_output": "choice", "logprobs": 2})
    spec = sampling_spec(run)
    assert spec.choices == ("positive", "negative") and spec.logprobs == 2
    assert json.loads(spec.to_json())["choices"] == ["positive", "negative"]
    run.cfg.generate.structured_output = "json"
    with pytest.raises(ConfigError, match="task.json_schema"):
        sampling_spec(run)


def test_cost_per_hour_and_per_token():
    hourly = PriceConfig(per_hour_usd=4.0)
    assert estimate_cost(hourly, 1800, 10**6, 10**6, 2) == pytest.approx(4.0)
    tokens = PriceConfig(input_per_1m_usd=0.5, output_per_1m_usd=1.5)
    assert estimate_cost(tokens, 99, 2_000_000, 1_000_000, 8) == pytest.approx(2.5)
    assert billed_units("vllm", 2, 4) == 8 and billed_units("openai", 2, 4) == 1


def test_api_key_comes_from_the_named_env_var(monkeypatch):
    ep = EndpointConfig(base_url="http://x/v1", model="m", api_key_env="DISTILL_TEST_KEY")
    monkeypatch.delenv("DISTILL_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="DISTILL_TEST_KEY"):
        api_key(ep)
    monkeypatch.setenv("DISTILL_TEST_KEY", "sk-secret")
    assert api_key(ep) == "sk-secret"


def test_sampling_json_leaves_out_the_per_row_seed():
    spec = SamplingSpec(n=3, seed=5)
    assert "seed" not in json.loads(spec.to_json()) and spec.with_seed(9).seed == 9



def test_served_dtype_on_a_cpu_is_bf16_only_with_bf16_instructions_and_no_lora(monkeypatch):
    import torch

    from teachers import serve

    # The CPU's instruction set can't be changed here: its two probes are replaced.
    monkeypatch.setattr(serve, "has_gpu", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    def dtype(bf16: bool, **kw) -> str:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        args = {"served_name": "m", "max_model_len": 512, "dtype": "auto", "lora_modules": None,
                "max_lora_rank": 8, "extra_args": [], **kw}
        cmd = serve.serve_command("/m", 1, **args)
        return cmd[cmd.index("--dtype") + 1]

    assert dtype(True) == "bfloat16"
    assert dtype(False) == "float32"
    assert dtype(True, lora_modules={"sft": "/a"}) == "float32"
    assert dtype(True, dtype="float32") == "float32"
