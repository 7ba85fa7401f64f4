"""A shrunken full run, end to end through the CLI, and its report in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from distill.curation.labels import normalize_label

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("teacher", "student_base", "student_sft", "student_dpo")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = yaml.safe_load((ROOT / "configs" / "tiny_cpu.yaml").read_text())
    cfg["output_dir"] = str(out)
    path = out.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    (out.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    return out


@pytest.mark.slow
def test_full_run_writes_every_stage_and_the_report(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert len(manifest["stages"]) == 14  # prune, policy_pairs and opd included: off, recorded skipped
    report = json.loads((tiny_run / "report" / "report.json").read_text())
    for name in MODELS:
        row = report["models"][name]
        assert 0.0 <= row["accuracy"]["ci_low"] <= row["accuracy"]["value"] \
            <= row["accuracy"]["ci_high"] <= 1.0
        for key in ("latency_p50_ms", "latency_p95_ms", "tokens_per_s", "cost_per_1k_requests"):
            assert row[key] is not None and row[key] > 0, (name, key)
        assert row["latency_p95_ms"] >= row["latency_p50_ms"]
    # The tuned students are evaluated and benchmarked as they ship: merged into the base.
    assert report["models"]["student_dpo"]["served_as"] == "vLLM, merged"
    assert report["models"]["student_sft"]["served_as"] == "vLLM, merged"
    assert (tiny_run / "merged" / "sft" / "config.json").is_file()
    # The CI teacher (135M) answers one label to every prompt: the check fails (accepted by the
    # config's check.on_fail=warn), and the report refuses to rank students against it.
    check = report["teacher_check"]
    assert check["passed"] is False and check["accepted"] is True
    assert check["teacher"]["value"] == check["majority"]["value"]
    assert report["verdict"]["passes"] is False and report["verdict"]["ship"] is None
    assert report["verdict"]["text"].startswith("No verdict against the teacher")
    assert "always answering 'positive'" in report["verdict"]["text"]
    assert check["labels"]["level"] == "stop"  # 32 of 32 'positive' against a 62% gold
    assert manifest["summaries"]["generate"]["labels"]["answers"]["positive"] > 0
    gold = manifest["summaries"]["curate"]["gold"]
    assert gold["mode"] == "filter" and gold["disagree"] > 0
    curated = pq.read_table(tiny_run / "curate" / "train.parquet").to_pylist()
    assert curated and all(r["target"] == r["label"] for r in curated)
    # Eval measured each model's latency on the server it answered with: bench started none.
    bench = json.loads((tiny_run / "bench" / "results.json").read_text())
    assert sorted(bench["measured_in_eval"]) == sorted(report["models"])
    parts = manifest["summaries"]["eval"]["seconds_by_part"]  # where eval's time went
    assert {"server_start", "task", "forgetting", "latency"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    # pairs.on_policy: DPO trained on pairs made of the SFT student's own samples.
    policy = manifest["summaries"]["policy_pairs"]
    assert policy["samples"] == 2 * policy["examples"] > 0 and policy["pairs"] > 0
    pairs = pq.read_table(tiny_run / "policy_pairs" / "pairs.parquet").to_pylist()
    samples = pq.read_table(tiny_run / "policy_pairs" / "samples.parquet").to_pylist()
    assert len(pairs) == policy["pairs"] and {p["origin"] for p in pairs} == {"on_policy"}
    labels = ["positive", "negative"]
    sampled = {(s["example_id"], normalize_label(s["completion"], labels) or s["completion"])
               for s in samples}
    assert all((p["example_id"], p["rejected"]) in sampled for p in pairs)  # its own answers
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.5 for p in pairs)
    assert manifest["summaries"]["dpo"]["pairs_from"] == "on_policy"
    assert manifest["summaries"]["dpo"]["pairs"] == policy["pairs"]
    assert "on-policy pairs" in report["student_costs"]["student_dpo"]["data"]
    # The exported card and report.json say where the student came from.
    tags = yaml.safe_load((tiny_run / "export" / "adapter" / "README.md").read_text()
                          .split("---", 2)[1])["distill"]["run"]
    assert tags["run_id"] == manifest["run_id"] == report["tags"]["run_id"]
    assert tags["dataset"]["sha256"] and tags["teacher"]["source_sha256"]
    assert report["forgetting"]["source"] == "eval.general_prompts"  # tiny_cpu's own prompts
    # The distilled student is served with the short prompt: fewer prompt tokens per request.
    assert report["models"]["student_dpo"]["prompt_tokens_per_request"] \
        < report["models"]["teacher"]["prompt_tokens_per_request"]


@pytest.mark.slow
def test_console_shows_no_engine_start_up_output(tiny_run):
    """What the in-process vLLM engines' subprocesses print while they start goes to the
    run's library log, not the console."""
    console = (tiny_run.parent / "console.txt").read_text()
    log = (tiny_run / "logs" / "libraries.log").read_text()
    for noise in ("Loading safetensors checkpoint shards", "Triton is installed"):
        assert noise not in console and noise in log, noise


@pytest.mark.slow
def test_rerun_skips_completed_stages(tiny_run):
    cfg = tiny_run.parent / "tiny.yaml"
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(cfg)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already done, skipped") == 14
    # A changed key is refused, naming it, before anything runs (tests/foundation/
    # test_stale_config.py has the rest)
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(cfg), "--set",
                           "generate.temperature=0.9"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "generate.temperature: 0.8 -> 0.9" in proc.stderr and "Traceback" not in proc.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(tiny_run, tmp_path):
    browser = _chromium()
    # A fail, not a skip: `make test` installs Chromium (make browser), so a missing one is a
    # broken setup, and a skipped check would pass quietly wherever it can't run.
    assert browser is not None, "chromium is missing: `make browser` (in `make test`) installs it"
    page = tiny_run / "report" / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:2000]
    ok, total = map(int, loaded.groups())
    assert total >= 4 and ok == total
    shown = re.sub(r"<script>.*?</script>", "", dom, flags=re.S)  # the page as rendered
    assert "Verdict:" in shown and "plot failed to load" not in shown
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1100,1800", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
