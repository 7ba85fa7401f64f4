"""Training seeds (`eval.seeds`): the run-dir layout (seed 0 exactly where a single-seed run
writes, seed k under seeds/<k>/, data and the teacher's/base student's answers shared), each
seed's own manifest record (resume and stale refusal per seed), and the decision over seeds on
synthetic per-seed evals (agree -> ship; disagree -> the safer choice, named)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill import decision as D
from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig
from distill.core.errors import StaleStageError
from distill.core.rundir import Run
from distill.pipeline import STAGES, label, plan, run_all, stale_changes, stage_by_name
from distill.report import build_report, render_html, render_markdown


def _cfg(tmp_path: Path, **eval_keys) -> RunConfig:
    return RunConfig.model_validate({
        "run_name": "t", "output_dir": str(tmp_path / "run"), "seed": 7,
        "task": {"name": "t", "type": "classification", "instruction": "?",
                 "labels": ["positive", "negative"]},
        "teacher": {"model": "x"}, "student": {"model": "y"}, "eval": eval_keys,
        "cost": {"teacher": {"per_hour_usd": 2.0}, "student": {"per_hour_usd": 1.0}}})


# --- layout ---------------------------------------------------------------------------------


def test_seed_zero_keeps_the_single_seed_paths_and_seed_k_lives_under_seeds(tmp_path):
    r = tmp_path
    one, zero, two = RunPaths(r), RunPaths(r, seed=0), RunPaths(r, seed=2)
    assert one == zero
    # a single-seed run's paths, spelled out: nothing moved
    assert one.adapter("sft") == r / "sft" / "adapter"
    assert one.train_summary("dpo") == r / "dpo" / "summary.json"
    assert one.export_summary == r / "export" / "export.json"
    assert one.merged("dpo") == r / "merged" / "dpo"
    assert one.eval_results == r / "eval" / "results.json"
    assert one.eval_answers("student_sft") == r / "eval" / "answers_student_sft.json"
    # seed 2: training, export and eval of its own ...
    s = r / "seeds" / "2"
    assert two.adapter("sft") == s / "sft" / "adapter"
    assert two.checkpoints("dpo") == s / "dpo" / "checkpoints"
    assert two.export_merged == s / "export" / "merged"
    assert two.merged("sft") == s / "merged" / "sft"
    assert two.eval_predictions == s / "eval" / "predictions.parquet"
    assert two.eval_answers("student_dpo") == s / "eval" / "answers_student_dpo.json"
    assert two.eval_judge("student_sft") == s / "eval" / "judge" / "student_sft.jsonl"
    # ... the data, bench, report and the answers of models no seed trains are shared
    for name in ("teacher", "student_base"):
        assert two.eval_answers(name) == one.eval_answers(name)
    for attr in ("train_prompts", "test_prompts", "curated", "pairs", "bench_results",
                 "report_json", "manifest", "teacher_check"):
        assert getattr(two, attr) == getattr(one, attr), attr


def test_the_plan_runs_shared_stages_once_and_the_training_block_seed_by_seed(tmp_path):
    run = Run(_cfg(tmp_path, seeds=3))
    steps = [label(r, s.name) for r, s in plan(run, STAGES)]
    block = ["sft", "policy_pairs", "dpo", "opd", "export", "eval"]  # off ones: recorded skipped
    assert steps == ["prompts", "check", "generate", "curate", "pairs", "prune", *block,
                     *[f"{n} (seed 1)" for n in block], *[f"{n} (seed 2)" for n in block],
                     "bench", "report"]
    seeded = run.for_seed(2)
    assert (seeded.train_seed, seeded.paths.seed_root) == (9, run.dir / "seeds" / "2")
    assert run.for_seed(0) is run and run.train_seed == 7


# --- manifest: resume and stale refusal per seed ---------------------------------------------


def _finish(run: Run, name: str) -> None:
    with run.stage(name):
        run.record_summary(name, {"seconds": 1.0})


def test_each_seed_resumes_on_its_own_record(tmp_path):
    run = Run(_cfg(tmp_path, seeds=3))
    for r, stage in plan(run, STAGES):
        if label(r, stage.name) == "dpo (seed 2)":
            break  # the crash: seed 2 had trained SFT only
        _finish(r, stage.name)
    reopened = Run(_cfg(tmp_path, seeds=3))
    todo = [label(r, s.name) for r, s in plan(reopened, STAGES) if not r.is_done(s.name)]
    assert todo == ["dpo (seed 2)", "opd (seed 2)", "export (seed 2)", "eval (seed 2)", "bench",
                    "report"]
    book = reopened.manifest["seeds"]["2"]
    assert book["train_seed"] == 9 and book["stages"]["sft"]["status"] == "done"
    assert reopened.manifest["stages"]["sft"]["status"] == "done"  # seed 0's, where it was
    assert "dpo" not in book["stages"] and reopened.summary("sft") == {"seconds": 1.0}


def test_a_stale_seed_is_refused_by_name_and_more_seeds_only_redo_the_report(tmp_path):
    run = Run(_cfg(tmp_path, seeds=2))
    for r, stage in plan(run, STAGES):
        _finish(r, stage.name)
    # more seeds: the finished seeds stay valid, the report (which sums them up) is stale
    more = Run(_cfg(tmp_path, seeds=3))
    stale = [label(r, s.name) for r, s in plan(more, STAGES) if stale_changes(r, s)]
    assert stale == ["report"]
    # a training key: every seed's training and what follows is stale, each named
    changed = RunConfig.model_validate({**_cfg(tmp_path, seeds=2).resolved(),
                                        "sft": {"learning_rate": 0.5}})
    with pytest.raises(StaleStageError) as err:
        run_all(Run(changed))
    text = str(err.value)
    assert "sft, policy_pairs, dpo, opd, export, eval, sft (seed 1), policy_pairs (seed 1)" in text
    assert "sft.learning_rate" in text
    assert not stale_changes(Run(changed).for_seed(1), stage_by_name("pairs"))


# --- the decision over seeds (synthetic per-seed evals) ----------------------------------------


def _items(correct: int, n: int = 200) -> dict[str, float]:
    return {f"x{i:03d}": float(i < correct) for i in range(n)}


def _seed(k: int, teacher: int, base: int, sft: int) -> dict:
    scores = {"teacher": _items(teacher), "student_base": _items(base),
              "student_sft": _items(sft)}
    decision = D.decide(scores, {}, D.Rule(), "accuracy")
    models = {name: sum(v.values()) / len(v) for name, v in scores.items()}
    return {"seed": k, "train_seed": 7 + k, "models": models, "decision": decision}


def test_seeds_that_agree_ship_and_the_spread_is_per_model():
    per_seed = [_seed(0, 180, 100, 184), _seed(1, 180, 100, 182), _seed(2, 180, 100, 186)]
    assert all(s["decision"]["ship"] == "student_sft" for s in per_seed)
    over = D.over_seeds(per_seed)
    assert over["passes"] is True and over["ship"] == "student_sft" and over["agree"] is True
    assert over["text"].startswith("All 3 training seeds agree")
    assert [r["ship"] for r in over["seeds"]] == ["student_sft"] * 3
    sft = D.seed_spread(per_seed)["student_sft"]
    assert sft["values"] == [0.92, 0.91, 0.93]
    assert (sft["mean"], sft["min"], sft["max"]) == pytest.approx((0.92, 0.91, 0.93))
    assert sft["std"] == pytest.approx(0.01)  # sample sd of 0.91, 0.92, 0.93
    teacher = D.seed_spread(per_seed)["teacher"]
    assert teacher["std"] == 0.0 and teacher["values"] == [0.9] * 3


def test_seeds_that_disagree_name_the_safer_choice():
    # one seed's student learns, the other's does not: the base is far below the teacher
    over = D.over_seeds([_seed(0, 180, 100, 180), _seed(1, 180, 100, 105)])
    assert over["passes"] is False and over["agree"] is False
    assert over["ship"] == "teacher" and over["branch"] == "seeds_disagree"
    assert "seeds disagree (seed 0: SFT student; seed 1: teacher)" in over["text"]
    assert "keep the teacher, the safer choice" in over["text"]
    # where the base student is itself within the margin of the teacher, it is the safer one
    over = D.over_seeds([_seed(0, 150, 150, 190), _seed(1, 150, 150, 150)])
    assert [r["ship"] for r in over["seeds"]] == ["student_sft", "student_base"]
    assert over["ship"] == "student_base" and over["passes"] is False
    assert "ship the base student (prompted), the safer choice" in over["text"]


def test_a_seed_without_eval_gives_no_verdict():
    missing = {"seed": 1, "train_seed": 8, "models": {},
               "decision": D.decide({}, {}, D.Rule(), "accuracy")}
    over = D.over_seeds([_seed(0, 180, 100, 180), missing])
    assert over["passes"] is None and "seed 1 has no complete eval" in over["text"]


# --- the report over seeds ---------------------------------------------------------------------


def _write_eval(paths: RunPaths, correct: dict[str, int], n: int = 200) -> None:
    rows, models = [], {}
    for name, k in correct.items():
        rows += [{"example_id": f"x{i:03d}", "model": name, "answer": "",
                  "parsed": "positive" if i < k else "negative", "gold": "positive"}
                 for i in range(n)]
        models[name] = {"accuracy": {"value": k / n, "ci_low": k / n - 0.05,
                                     "ci_high": k / n + 0.05}}
    paths.eval_predictions.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), paths.eval_predictions)
    paths.eval_results.write_text(json.dumps({"main_metric": "accuracy", "models": models,
                                              "examples": n}))


def test_the_report_shows_each_seed_and_decides_over_them(tmp_path):
    cfg = _cfg(tmp_path, seeds=2)
    root = Path(cfg.output_dir)
    manifest = {"run_id": "t", "config": cfg.resolved(), "stages": {"sft": {"seconds": 3.0}},
                "summaries": {"sft": {"seconds": 3.0, "world_size": 1}},
                "seeds": {"1": {"stages": {"sft": {"seconds": 4.0}},
                                "summaries": {"sft": {"seconds": 3600.0, "world_size": 1}}}}}
    _write_eval(RunPaths(root), {"teacher": 180, "student_base": 100, "student_sft": 180})
    _write_eval(RunPaths(root, seed=1), {"teacher": 180, "student_base": 100,
                                         "student_sft": 104})
    report = build_report(root, manifest, cfg)
    assert report["verdict"]["ship"] == "teacher" and report["verdict"]["passes"] is False
    assert report["seeds"]["models"]["student_sft"]["values"] == [0.9, 0.52]
    md = render_markdown(report)
    assert "## Training seeds" in md
    assert "| model | seed 0 | seed 1 | mean | min-max | sd |" in md
    assert "| student SFT | 0.900 | 0.520 | 0.710 | 0.520-0.900 | 0.269 |" in md
    assert "| 1 | 8 | teacher |" in md
    assert "The training seeds disagree" in md.split("\n")[2]  # the verdict line
    assert 'id="seeds"' in render_html(report, {})
    assert report["stage_seconds"] == {"sft": 3.0, "sft (seed 1)": 4.0}
    # every seed's training is part of what distilling cost (student: $1 per hour)
    items = {x["item"]: x["usd"] for x in report["verdict"]["cost"]["one_off"]["items"]}
    assert items == {"SFT training": round(3 / 3600, 6), "SFT training (seed 1)": 1.0}
    # one seed: no seeds section, seed 0's verdict as ever
    single = build_report(root, manifest, _cfg(tmp_path))
    assert single["seeds"] is None and single["verdict"]["ship"] == "student_sft"
    assert "Training seeds" not in render_markdown(single)
