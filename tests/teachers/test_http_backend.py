"""The OpenAI-compatible backend against a real `vllm serve` on 127.0.0.1, and the stage's
fault tolerance on Ray: a crashed actor is restarted, a killed driver resumes exactly once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from distill.core.config import EndpointConfig
from teachers.base import SamplingSpec
from teachers.http_engine import OpenAIGenerator
from teachers.serve import vllm_server
from teachers.generate import FAULT_ENV, FaultInjected, run_generate
from teacher_helpers import REVIEWS, make_run, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(student_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    # float32 as OPD's own scoring server (students/opd.py): the OPD test below scores on it.
    with vllm_server(student_path, served_name="student", max_model_len=256, dtype="float32",
                     log_path=log) as url:
        yield url


def _endpoint(url: str, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=url, model="student", max_concurrency=4, timeout_s=120,
                          max_retries=2, **kw)


def test_seeded_samples_are_reproducible_and_long_prompts_quarantined(server):
    gen = OpenAIGenerator(_endpoint(server))
    msgs = [[{"role": "user", "content": f"Review: {t}. Positive or negative?"}]
            for t in REVIEWS[:3]]
    msgs.append([{"role": "user", "content": "word " * 400}])  # > max_model_len 256
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=6)
    first = gen.generate(msgs, spec, seeds=[11, 12, 13, 14])
    again = gen.generate(msgs, spec, seeds=[11, 12, 13, 14])
    assert [c.text for c in first] == [c.text for c in again]
    ok = [c for c in first if c.ok]
    assert len(ok) == 6 and all(c.completion_tokens > 0 and c.prompt_tokens > 5 for c in ok)
    assert [(c.prompt_index, c.sample_index, c.seed) for c in ok[:2]] == [(0, 0, 11), (0, 1, 12)]
    bad = [c for c in first if not c.ok]
    assert len(bad) == 2 and bad[0].prompt_index == 3 and bad[0].error.startswith("http_400")


def test_crashed_actor_and_killed_driver_resume_exactly_once(server, ray_local, tmp_path,
                                                             monkeypatch):
    # No api_key_env: the workers of the shared test Ray predate any variable set here. The
    # key's path (and that it reaches no log) is test_endpoint_faults.py's.
    teacher = {"backend": "openai", "replicas": 1, "endpoint": _endpoint(server).model_dump()}
    run = make_run(tmp_path, model="student", n=2, texts=REVIEWS[:16], teacher=teacher)
    marker = tmp_path / "actor_crashed"
    monkeypatch.setenv(FAULT_ENV, json.dumps({"actor_crash_once": str(marker),
                                              "driver_crash_after_shards": 1}))
    with pytest.raises(FaultInjected):
        run_generate(run)
    assert marker.exists()  # the first actor died on its first batch; Ray restarted it
    first_files = sorted((run.dir / "generate" / "shards").glob("shard-*.parquet"))
    assert 1 <= len(first_files) < 4
    kept = {f.name: f.stat().st_mtime_ns for f in first_files}

    monkeypatch.delenv(FAULT_ENV)
    summary = run_generate(run)
    rows = read_rows(run)
    assert len(rows) == 16 * 2 and len({r["row_id"] for r in rows}) == 32
    assert len({r["prompt_id"] for r in rows}) == 16 == summary["prompts"]
    assert summary["resumed_prompts"] == 4 * len(first_files)
    assert summary["prompts_this_run"] == 16 - 4 * len(first_files)
    assert {f.name: f.stat().st_mtime_ns for f in first_files} == kept  # never rewritten
    assert all(r["backend"] == "openai" and r["model"] == "student" for r in rows)


def test_opd_trains_against_this_server_as_its_teacher(server, tmp_path):
    """opd.teacher_scoring: server with teacher.backend: openai on this `vllm serve` (SmolLM2,
    the OPD test's teacher): TRL's server trainer scores the student's samples with prompt
    logprobs (top-1 reverse KL) and the held-out KL (its top-20 bound, scored by the same
    server) falls. Here rather than in tests/students: this module's server is already up."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "students"))
    from student_data import tiny_config
    from test_opd import OPD, SERVED, check_opd_lowers_heldout_kl

    teacher = {"model": "packaged:smollm2-135m-instruct", "backend": "openai",
               "endpoint": {"base_url": server, "model": "student"}}
    cfg = tiny_config(tmp_path / "run", teacher=teacher, opd={**OPD, **SERVED},
                      student={"quantization": "none"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    check_opd_lowers_heldout_kl(tmp_path, path, "server")
