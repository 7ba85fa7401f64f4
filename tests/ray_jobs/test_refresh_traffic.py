"""`distill refresh --from-traffic`: the next version's new prompts are the captured ones,
minus repeats, minus what was trained on, never the held-out set; curate then drops the
near-duplicates of trained data as in any refresh. Capture shards come from the real writer."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from refresh_helpers import Runner, first_run, ids, make_config, sentences, write_jsonl

from distill import refresh as R
from distill.core import versions as V
from distill.core.artifacts import RunPaths
from distill.core.messages import text_id
from distill.serving.capture import TrafficWriter
from distill.serving.metrics import ServeMetrics


def labelled_generate(run) -> dict:
    """Stand-in for the vLLM teacher (as refresh_helpers.fake_generate): captured prompts
    have no gold label, so the stand-in answers by word count parity."""
    prompts = pq.read_table(run.dir / "prompts" / "train.parquet").to_pylist()
    rows = [{"row_id": f"p{p['example_id'][:15]}-0", "prompt_id": f"p{p['example_id'][:15]}",
             "example_id": p["example_id"], "text": p["text"], "label": p["label"],
             "messages": json.dumps([{"role": "user", "content": p["text"]}]),
             "completion": p["label"] or ("positive" if len(p["text"]) % 2 else "negative"),
             "sample_index": 0, "prompt_tokens": 14, "completion_tokens": 1,
             "finish_reason": "stop", "latency_s": 0.0, "backend": "fake", "model": "fake",
             "sampling": "{}", "seed": 0, "logprobs": None} for p in prompts]
    shards = run.dir / "generate" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), shards / "shard-00000.parquet")
    return {"prompts": len(prompts), "rows": len(rows)}


def capture(cfg, prompts: list[str]) -> None:
    writer = TrafficWriter(RunPaths(cfg.output_dir).traffic, cfg.serve.capture, ServeMetrics())
    for i, p in enumerate(prompts):
        writer.add({"request_id": f"r{i}", "model": "sentiment", "version": "v0000",
                    "prompt": p, "answer": "positive", "formatted": True, "latency_s": 0.01,
                    "prompt_tokens": 20, "completion_tokens": 1, "status": "ok"})
    writer.add({"request_id": "failed", "model": "sentiment", "version": "v0000",
                "prompt": "an answer never came", "status": "error", "latency_s": 0.1})
    writer.close()


def test_refresh_from_traffic_uses_captured_prompts(tmp_path):
    src = tmp_path / "prompts"
    write_jsonl(src / "a.jsonl", sentences(30, seed=1))
    cfg = make_config(tmp_path, src, serve={"capture": {"enabled": True}})
    runner = Runner(accuracy=0.70)
    runner.fakes["generate"] = labelled_generate
    first_run(cfg, runner)
    base = cfg.output_dir
    trained = [e["text"] for e in pq.read_table(base / "prompts" / "train.parquet").to_pylist()]
    held_out = [e["text"] for e in pq.read_table(base / "prompts" / "test.parquet").to_pylist()]

    live = [r["text"] for r in sentences(8, seed=2)]
    near = trained[0].rsplit(" ", 1)[0] + " w399"  # new to the teacher, near a trained prompt
    capture(cfg, live + [live[0], "  " + live[1].replace(" ", "  ") + " ", trained[3],
                         held_out[0], held_out[1], near])
    # the prompt source grew too: --from-traffic ignores it
    write_jsonl(src / "b.jsonl", sentences(5, seed=3))

    again = Runner(accuracy=0.72)
    again.fakes["generate"] = labelled_generate
    result = R.refresh(cfg, again, from_traffic=True)

    vdir = base / "refresh" / "v0001"
    expected = {text_id(t) for t in live} | {text_id(near)}
    assert result.version == "v0001" and result.new_prompts == len(expected) == 9
    assert ids(vdir / "data" / "prompts" / "train.parquet") == expected
    assert not ids(vdir / "data" / "prompts" / "train.parquet") & {text_id(t) for t in held_out}
    lineage = V.lineage(vdir)
    assert lineage["prompt_source"] == "traffic" and lineage["sources"] == ["traffic"]
    # curate drops the near-duplicate of a trained prompt against the persistent index
    assert text_id(near) not in ids(vdir / "data" / "curate" / "train.parquet")
    assert ids(vdir / "data" / "curate" / "train.parquet") == {text_id(t) for t in live}

    # everything captured is now seen: a second cycle finds nothing new
    assert R.refresh(cfg, again, from_traffic=True).status == "nothing_new"
