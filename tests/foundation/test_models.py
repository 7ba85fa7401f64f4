"""Model sources: packaged GGUFs become folders that transformers and vLLM both load.

vLLM loading each packaged folder is not repeated here (an engine start costs a minute of CI):
the teacher's folder runs in vLLM in tests/curation/test_generative_curation.py (the judge on
the real teacher), the student's in tests/teachers/test_vllm_generator.py,
tests/teachers/test_http_backend.py and every e2e run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from distill.core import models
from distill.core.errors import ModelSourceError

PACKAGED = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
CHAT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def prepared() -> dict[str, str]:
    return {name: models.resolve(f"packaged:{name}").path for name in PACKAGED}


def test_prepared_folders_carry_tokenizer_template_and_verified_hash(prepared):
    for name, folder in prepared.items():
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in config  # else vLLM looks for a GGUF
        assert (folder / "model.safetensors").is_file()
        assert (folder / "chat_template.jinja").is_file()
        marker = json.loads((folder / "distill_source.json").read_text())
        expected = models.PACKAGED[name].sha256
        assert expected and marker["source_sha256"] == expected


@pytest.mark.slow
def test_transformers_loads_and_generates(prepared):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder in prepared.values():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text.strip(), folder


def test_tampered_package_is_refused(monkeypatch, tmp_path):
    # Fault injection: a wrong expected hash stands in for a tampered download.
    tampered = replace(models.PACKAGED["smollm2-135m-instruct"], sha256="0" * 64)
    monkeypatch.setitem(models.PACKAGED, "smollm2-135m-instruct", tampered)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    with pytest.raises(ModelSourceError, match="refusing to load an unverified model"):
        models.prepare_packaged("smollm2-135m-instruct")
    assert not list(tmp_path.rglob("*.safetensors"))


def test_reference_kinds(tmp_path, prepared):
    assert models.resolve("packaged:smollm2-135m-instruct").kind == "packaged"
    assert models.resolve(prepared["smollm2-135m-instruct"]).kind == "local"
    assert models.resolve("Qwen/Qwen2.5-7B-Instruct").kind == "hub"
    with pytest.raises(ModelSourceError, match="unknown packaged model"):
        models.resolve("packaged:nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="needs config.json"):
        models.resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="neither"):
        models.resolve("./missing/folder")


def test_list_models_reports_installed_and_prepared(prepared):
    rows = {r["name"]: r for r in models.list_models()}
    assert rows["packaged:qwen2.5-coder-0.5b-instruct"]["installed"]
    assert rows["packaged:smollm2-135m-instruct"]["prepared"]
