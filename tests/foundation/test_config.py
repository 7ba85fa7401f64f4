"""Config validation: every bad place is reported with its line and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.core.config import RunConfig, load_config
from distill.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _quickstart_with(tmp_path: Path, old: str, new: str) -> Path:
    text = QUICKSTART.read_text()
    assert old in text, old
    return _write(tmp_path, text.replace(old, new, 1))


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_every_shipped_config_validates():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig), path


def test_misspelled_key_names_line_and_path(tmp_path):
    path = _quickstart_with(tmp_path, "  temperature: 0.7", "  temprature: 0.7")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    line = _line_of(path, "temprature")
    assert f"line {line}: generate.temprature: unknown key" in exc.value.problems
    assert str(path) in str(exc.value)


def test_wrong_type_names_expected_and_got(tmp_path):
    path = _quickstart_with(tmp_path, "  n: 3 ", "  n: three ")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (problem,) = exc.value.problems
    assert problem.startswith(f"line {_line_of(path, 'n: three')}: generate.n: ")
    assert "integer" in problem and "'three'" in problem


def test_missing_data_file_is_reported(tmp_path):
    path = _quickstart_with(tmp_path, "  source: rotten_tomatoes",
                            "  source: jsonl\n  path: /nonexistent/prompts.jsonl")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any("prompts.path: file not found: /nonexistent/prompts.jsonl" in p
               for p in exc.value.problems)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_all_problems_reported_at_once(tmp_path):
    data = yaml.safe_load(QUICKSTART.read_text())
    data["sft"]["batch_sise"] = 4
    data["dpo"]["beta"] = "high"
    del data["student"]["model"]
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, yaml.safe_dump(data)))
    text = "\n".join(exc.value.problems)
    assert "sft.batch_sise: unknown key" in text
    assert "dpo.beta:" in text
    assert "student.model: required key is missing" in text


def test_cross_field_rules(tmp_path):
    path = _quickstart_with(tmp_path, "  labels: [positive, negative]\n", "")
    with pytest.raises(ConfigError, match="classification task needs task.labels"):
        load_config(path)


def test_on_policy_pairs_need_the_training_stages_that_use_them():
    assert load_config(QUICKSTART, ["pairs.on_policy=true"]).pairs.on_policy
    with pytest.raises(ConfigError, match="pairs.on_policy: .* needs pairs.enabled, sft.enabled "
                                          "and dpo.enabled"):
        load_config(QUICKSTART, ["pairs.on_policy=true", "dpo.enabled=false"])


def test_overrides_are_validated_too():
    cfg = load_config(QUICKSTART, ["sft.max_steps=7", "generate.n=2"])
    assert (cfg.sft.max_steps, cfg.generate.n) == (7, 2)
    with pytest.raises(ConfigError, match="sft.max_stepz: unknown key"):
        load_config(QUICKSTART, ["sft.max_stepz=7"])


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config(QUICKSTART), load_config(QUICKSTART)
    assert a.config_hash() == b.config_hash()
    assert load_config(QUICKSTART, ["seed=1"]).config_hash() != a.config_hash()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_validate_prints_places_without_traceback(tmp_path):
    path = _quickstart_with(tmp_path, "  temperature: 0.7", "  temprature: 0.7")
    proc = _cli("config", "validate", str(path))
    assert proc.returncode == 2
    assert "generate.temprature: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_show_resolves_defaults():
    proc = _cli("config", "show", str(QUICKSTART))
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["curate"]["dedup"]["num_perm"] == 128  # a default, not in the file
    assert shown["generate"]["n"] == 3


def test_readme_config_reference_is_in_sync():
    from distill.config_docs import BEGIN, END, render
    readme = (ROOT / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == render().strip(), "run: python -m distill.config_docs --write README.md"


def test_renamed_sections_are_named_with_their_new_place(tmp_path):
    text = (QUICKSTART.read_text().replace("prompts:", "data:", 1)
            .replace("generate:", "generation:", 1))
    path = tmp_path / "old.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert problems[0] == (f"line {_line_of(path, 'data:')}: data: this section is now "
                           "`prompts` (each command's section has the command's name)")
    assert problems[1].startswith(f"line {_line_of(path, 'generation:')}: generation: "
                                  "this section is now `generate`")


def test_replaced_keys_name_the_decision_rule(tmp_path):
    path = _quickstart_with(tmp_path, "  max_tokens: 8", "  max_tokens: 8\n  quality_bar: 0.9")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert problem == (f"line {_line_of(path, 'quality_bar')}: eval.quality_bar: no longer a "
                       "key; the ship decision is a paired test now: eval.alpha, "
                       "eval.non_inferiority_margin, eval.max_forgetting")


@pytest.mark.parametrize("labels, expected", [
    ("[positive, negative, positive]", "duplicate label 'positive': same as 'positive'"),
    ("[positive, negative, Positive]", "duplicate label 'Positive': same as 'positive'"),
    ("[positive, '', negative]", "label '' is empty"),
    ("[positive, '?', negative]", "label '?' is empty"),
    ("[positive]", "a classification task needs at least two task.labels"),
])
def test_label_lists_are_distinct_and_non_empty(tmp_path, labels, expected):
    path = _quickstart_with(tmp_path, "  labels: [positive, negative]", f"  labels: {labels}")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (problem,) = exc.value.problems
    assert problem.startswith(f"line {_line_of(path, 'labels:')}: task")
    assert expected in problem


def test_duplicate_yaml_key_names_both_lines(tmp_path):
    # YAML keeps the last of two equal keys silently; a repeated key must be an error instead.
    path = _quickstart_with(tmp_path, "  temperature: 0.7", "  temperature: 0.7\n  n: 5")
    first, second = (i for i, line in enumerate(path.read_text().splitlines(), 1)
                     if line.startswith("  n: "))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == [
        f"line {second}: generate.n: duplicate key (first at line {first}; YAML would keep "
        "only the last)"]


def test_duplicate_top_level_section(tmp_path):
    path = _write(tmp_path, QUICKSTART.read_text() + "\nseed: 3\nseed: 4\n")
    with pytest.raises(ConfigError, match=r"seed: duplicate key \(first at line \d+"):
        load_config(path)


def test_directory_as_config_is_named_a_directory(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert exc.value.problems == ["is a directory, not a config file"]


def test_non_utf8_config_names_line_and_offset(tmp_path):
    text = QUICKSTART.read_text().replace("run_name:", "# caf\xe9\nrun_name:", 1)
    path = tmp_path / "latin1.yaml"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    line = text.splitlines().index("# caf\xe9") + 1
    assert exc.value.problems == [
        f"line {line}: not UTF-8: byte e9 at offset {offset} "
        "(save the file as UTF-8)"]


def test_config_with_bom_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + QUICKSTART.read_bytes())
    assert load_config(path) == load_config(QUICKSTART)


def test_cli_non_utf8_config_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(QUICKSTART.read_bytes().replace(b"run_name:", b"# \xff\nrun_name:", 1))
    proc = _cli("config", "validate", str(path))
    assert proc.returncode == 2
    assert "not UTF-8" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
