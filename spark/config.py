"""Run configuration: one TOML file shows every setting, `section.key=value` overrides it.

`TrainConfig` (at the end) is the schema of a training run, one dataclass per TOML table.

`load_config(cls, path, overrides)` fills a dataclass tree from TOML tables. Unknown keys, values of the
wrong type and values outside a `Literal[...]` (a misspelt mode) are errors that name the file, the key,
the value and what is allowed, raised before anything else happens; a missing key takes its default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (a device image's): the backport when installed, else no TOML
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

from spark.data import RowFormat, Task
from spark.losses import POLICY_LOSSES, AdvantageScale, AdvantageStd, Aggregation, KLKind
from spark.recycle import Mode, RecycleConfig
from spark.sampler import Sampling
from spark.verifier import AnswerMode

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-6` -> (["optim", "lr"], 1e-06). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    if tomllib is None and (path or overrides):
        raise ConfigError("reading a TOML config or overrides needs Python 3.11 or the tomli package")
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path:
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: {e}") from None
    for override in overrides:
        keys, value = parse_override(override)
        table = raw
        for key in keys[:-1]:
            table = table.setdefault(key, {})
        table[keys[-1]] = value
    return from_dict(cls, raw, source, "")


def from_dict(cls: type[T], raw: dict, source: str, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = coerce(hints[name], value, source, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own range checks (__post_init__)
        raise ConfigError(f"{source}: [{prefix.rstrip('.') or 'top level'}] {e}") from None


def coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a table")
        return from_dict(hint, value, source, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{source}: '{key}' = {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return origin(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a table, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {coerce(key_hint, k, source, f"{key} key"): coerce(value_hint, v, source, f"{key}.{k}")
                for k, v in value.items()}
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


# ---- The training run's settings: every field appears in configs/*.toml -------------------------------

@dataclass
class ModelSettings:
    path: str = ""  # Hugging Face checkpoint directory (config.json, safetensors, tokenizer)
    mixed_precision: bool = True  # bf16 compute with fp32 master weights and reductions (GPU and CPU)
    activation_checkpointing: bool = False  # recompute each block in backward
    freeze_vision: bool = False  # Qwen2.5-VL: keep the vision tower fixed during RL


@dataclass
class DataSettings:
    train_files: list[str] = field(default_factory=list)  # JSONL / JSON / Parquet files; globs allowed
    # rows: {question, answer, image?} in the fields below | messages: the authors' OpenRLHF rows, a chat of
    # one user message (text and image parts) in question_field and the gold answer in answer_field
    format: RowFormat = "rows"
    question_field: str = "question"  # format = messages: the chat's field (their --input_key, "message")
    answer_field: str = "answer"
    image_field: str = "image"  # path(s) relative to the data file or embedded image(s); absent or null for text rows
    max_rows: int = 0  # train on a random subset of this many rows of train_files; 0 = all rows
    subset_seed: int = 0  # which subset max_rows draws (apart from seed, so that runs of several seeds share it)
    prompts_per_step: int = 64  # global batch of questions per step (split over ranks)
    epochs: int = 2
    max_prompt_tokens: int = 2048  # longer prompts are an error naming the row
    # Image resizing bounds (Qwen2.5-VL); 0 keeps the checkpoint's preprocessor_config.json value.
    min_pixels: int = 0  # policy prompts' images are scaled up to at least this many pixels
    max_pixels: int = 0  # ... and down to at most this many
    judge_max_pixels: int = 0  # max_pixels of recycled (judge and reflection) prompts; 0 = max_pixels
    seed: int = 0  # data order, sampling and recycling draws all derive from (seed, step, rank)

    def __post_init__(self):
        if self.max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 (0 = all rows), got {self.max_rows}")


@dataclass
class RolloutSettings(Sampling):
    """The sampling knobs (spark.sampler.Sampling: max_new_tokens, temperature, top_p, top_k, repetition_penalty)
    and the engine."""

    max_new_tokens: int = 768
    n: int = 8  # rollouts per prompt (group size)
    batch_size: int = 256  # sequences per sampler call
    compile: bool = False  # torch.compile the decode step (CUDA graphs on CUDA; fused small ops on CPU)

    def __post_init__(self):
        super().__post_init__()
        if self.n < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("n, batch_size and max_new_tokens must be >= 1")


@dataclass
class LossSettings:
    policy_loss: str = "grpo"  # a name in spark.losses.POLICY_LOSSES: grpo (token-level clipped surrogate)
    kl_coef: float = 0.001  # lambda of the KL to the frozen reference, in the loss
    kl_kind: KLKind = "k3"  # k1 | k2 | k3
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low is clip-higher
    dual_clip: float = 0.0  # > 1 enables dual-clip; 0 = off
    aggregation: Aggregation = "token-mean"  # token-mean | seq-mean-token-mean
    advantage_scale: AdvantageScale = "group"  # group | batch | none (Dr. GRPO)
    # population: (r - mean) / sqrt(var + eps); unbiased: (r - mean) / (sample std + eps), the authors' code
    advantage_std: AdvantageStd = "population"
    advantage_eps: float = 1e-6
    mask_truncated: bool = False  # responses cut at max_new_tokens carry no loss
    mini_batch_size: int = 0  # rollouts per optimizer step, over all ranks; 0 = the whole batch in one step
    # The order mini-batches are cut from, per pass: groups (a prompt's responses together, its prompt packed
    # once; verl) | rollouts (each on its own; the authors' OpenRLHF)
    mini_batch_order: Literal["groups", "rollouts"] = "groups"
    ppo_epochs: int = 1  # passes over each batch (each mini-batch an optimizer step)
    micro_batch_tokens: int = 8192  # packed tokens per forward/backward
    logprob_chunk: int = 1024  # tokens per fp32 logits chunk

    def __post_init__(self):
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"policy_loss = {self.policy_loss!r} is not one of {', '.join(map(repr, POLICY_LOSSES))}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low} and {self.clip_high}")
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}")
        if self.ppo_epochs < 1 or self.micro_batch_tokens < 1 or self.logprob_chunk < 1:
            raise ValueError("ppo_epochs, micro_batch_tokens and logprob_chunk must be >= 1")
        if self.mini_batch_size < 0:
            raise ValueError(f"mini_batch_size must be >= 0 (0 = the whole batch), got {self.mini_batch_size}")


@dataclass
class RewardSettings:
    # strict: the answer is the last \boxed{}, the format the prompt asks for, so the policy is rewarded for
    # following it; lenient: found as a human grader would (the default of evaluation and TTS); first: the
    # first \boxed{}, as the authors' evaluation scripts read it
    answer_mode: AnswerMode = "strict"


@dataclass
class OptimSettings:
    lr: float = 5e-7
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # linear warm-up over this fraction of the steps
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class SparkSettings:
    mode: Mode = "spark"  # policy-only | reward-only | policy+reward | spark (the paper's ablation rows)
    schedule: Literal["separate", "mixed"] = "separate"  # separate: recycled update right after the policy update; mixed: into the next batch
    task_weights: dict[Task, float] = field(default_factory=dict)  # per task; a task left out keeps weight 1.0
    recycle: RecycleConfig = field(default_factory=RecycleConfig)  # rules; kinds off/on also follow `mode`
    # Recycled prompts per update, over all ranks: trained in full batches once this many wait, the rest
    # carried to later steps (the authors' 64); 0 = each step's recycled prompts all at once
    recycled_batch: int = 0

    def __post_init__(self):
        self.task_weights = {**dict.fromkeys(typing.get_args(Task), 1.0), **self.task_weights}
        if any(weight < 0 for weight in self.task_weights.values()):
            raise ValueError(f"task weights must be >= 0, got {self.task_weights}")
        if self.recycled_batch < 0:
            raise ValueError(f"recycled_batch must be >= 0, got {self.recycled_batch}")


@dataclass
class RunSettings:
    out_dir: str = "runs/default"
    max_steps: int = 0  # 0 = epochs over the data
    save_every: int = 50  # distributed checkpoint every K steps (0 = only at the end)
    keep_last: int = 3
    export_every: int = 0  # Hugging Face export every M steps (0 = only at the end)
    sample_every: int = 10  # log sample completions as text every K steps
    eval_every: int = 0  # held-out evaluation every K steps (0 = off)
    eval_files: list[str] = field(default_factory=list)  # held-out rows {question, answer} for eval_every
    judge_eval_files: list[str] = field(default_factory=list)  # held-out pointwise rows {question, answer, label}
    eval_max_new_tokens: int = 256
    # auto: resume from the latest checkpoint, which must be of the same run (seed, model, data files, n,
    # prompts_per_step); force: resume even when those changed
    resume: Literal["auto", "force"] = "auto"
    # On GPU the run starts with spark.plan's memory plan; refuse: stop when it says the config does not fit
    # (naming settings that would); warn: print that and go on (the plan is an upper bound)
    memory_check: Literal["refuse", "warn"] = "refuse"
    peak_tflops: float = 0.0  # per GPU, for MFU; 0 = spark.flops.PEAK_TFLOPS by device name
    max_skipped_steps: int = 3  # optimizer steps skipped in a row (non-finite loss or grad norm) before the run stops
    collective_timeout_s: int = 1800  # a rank waiting this long in a collective (e.g. on a dead peer) fails

    def __post_init__(self):
        if self.max_skipped_steps < 0 or self.collective_timeout_s < 1:
            raise ValueError("max_skipped_steps must be >= 0 and collective_timeout_s >= 1")


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        batch, size = self.data.prompts_per_step * self.rollout.n, self.loss.mini_batch_size
        if size and batch % size:
            raise ValueError(f"loss.mini_batch_size={size} must divide the batch of data.prompts_per_step x "
                             f"rollout.n = {batch} rollouts")


def config_hash(config: TrainConfig) -> str:
    """A short fingerprint of every setting, recorded in each checkpoint's manifest."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:16]
