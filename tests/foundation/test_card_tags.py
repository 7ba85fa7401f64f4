"""The exported model card and report.json say where the student came from: run id, config
hash, the curated data's sha256, the teacher and its source hash, generation and training
settings, package versions."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distill.core.config import load_config
from distill.core.io import file_sha256
from distill.core.rundir import Run, run_tags
from distill.report import run_report
from students import card

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path) -> Run:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = Run(load_config(path, ["generate.temperature=0.9", "sft.learning_rate=0.0003"]))
    run.paths.curated.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b"], "target": ["positive", "negative"]}),
                   run.paths.curated)
    run.record_model("teacher", {"ref": run.cfg.teacher.model, "kind": "packaged",
                                 "path": "/x", "source_sha256": "ab" * 32})
    return run


def test_the_card_carries_the_run_tags(tmp_path):
    run = _run(tmp_path)
    folder = tmp_path / "adapter"
    folder.mkdir()
    card.write_card(folder, stage="dpo", base_model=run.cfg.student.model, base_path="/base",
                    dataset="pairs/pairs.parquet", dataset_sha256="cd" * 32,
                    config=run.cfg.resolved(), metrics={"loss": 0.1}, tags=run_tags(run))
    tags = card.read_card(folder)["distill"]["run"]
    assert tags["run_id"] == run.run_id and tags["config_hash"] == run.cfg.config_hash()
    assert tags["dataset"]["sha256"] == file_sha256(run.paths.curated)
    assert tags["teacher"]["model"] == run.cfg.teacher.model
    assert tags["teacher"]["source_sha256"] == "ab" * 32
    assert tags["generation"]["temperature"] == 0.9 and tags["generation"]["n"] == run.cfg.generate.n
    assert tags["student"]["base"] == run.cfg.student.model
    assert tags["student"]["quantization"] == run.cfg.student.quantization
    assert tags["training"]["sft"]["learning_rate"] == 0.0003
    assert tags["training"]["dpo"]["beta"] == run.cfg.dpo.beta
    assert tags["packages"]["pyarrow"] == pa.__version__
    text = (folder / "README.md").read_text()
    assert f"run: `{run.run_id}`, config hash `{run.cfg.config_hash()}`" in text
    assert "temperature 0.9" in text and "source sha256 `" + "ab" * 32 in text


def test_report_json_carries_the_same_tags(tmp_path):
    run = _run(tmp_path)
    run_report(run)
    report = json.loads(run.paths.report_json.read_text())
    assert report["tags"] == json.loads(json.dumps(run_tags(run)))
