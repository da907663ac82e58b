"""Run configuration: one TOML file shows every setting, `section.key=value` overrides it.

`TrainConfig` (at the end) is the schema of a training run, one dataclass per TOML table.

`load_config(cls, path, overrides)` fills a dataclass tree from TOML tables. Unknown keys, values of the
wrong type, values outside a `Literal[...]` (a misspelt mode) and values outside a field's range
(`spark.errors.ranged`, or a rule across settings) are errors that name where the key was set (the file, or
the command line for an override), the key, the value and what is allowed, raised before anything else
happens; a missing key takes its default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import textwrap
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

from spark.data.rows import RowFormat
from spark.errors import SettingError, UserError, check_ranges, ranged
from spark.generation.sampler import Sampling
from spark.rl.losses import POLICY_LOSSES, AdvantageScale, AdvantageStd, Aggregation, KLKind
from spark.rl.recycle import Mode, RecycleConfig
from spark.tasks.table import TASKS
from spark.verify import AnswerMode

T = TypeVar("T")


class ConfigError(UserError):
    pass


COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Sources:
    """Where a config's keys were set: `file`, or the command line for the keys (dotted) that overrides set."""

    file: str
    overridden: frozenset[str] = frozenset()

    def of(self, *keys: str) -> str:
        """The command line when any of `keys` is, or lies inside, a key an override set; else the file. A key
        may end with " key" (a dict's key rather than its value)."""
        for key in keys:
            if any(key == set_key or key.startswith((set_key + ".", set_key + " ")) for set_key in self.overridden):
                return COMMAND_LINE
        return self.file


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-6` -> (["optim", "lr"], 1e-06). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"{COMMAND_LINE}: '{text}' is not section.key=value")
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
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    overridden = set()
    for override in overrides:
        keys, value = parse_override(override)
        table = raw
        for depth, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{COMMAND_LINE}: '{'.'.join(keys)}': '{'.'.join(keys[:depth + 1])}' is not a table")
        table[keys[-1]] = value
        overridden.add(".".join(keys))
    return from_dict(cls, raw, Sources(str(path) if path else "<defaults>", frozenset(overridden)), "")


def from_dict(cls: type[T], raw: dict, sources: Sources, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{sources.of(key)}: unknown key '{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = coerce(hints[name], value, sources, prefix + name)
    try:
        return cls(**kwargs)
    except SettingError as e:  # a field's range, or a rule across fields (named from the config's top)
        key = prefix + e.name
        raise ConfigError(f"{sources.of(key, *e.others)}: '{key}' = {e.value!r} {e.rule}") from None
    except ValueError as e:  # a dataclass's other checks (__post_init__)
        raise ConfigError(f"{sources.of(prefix.rstrip('.'))}: [{prefix.rstrip('.') or 'top level'}] {e}") from None


def coerce(hint: Any, value: Any, sources: Sources, key: str) -> Any:
    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{sources.of(key)}: '{key}' must be {what}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise refuse("a table")
        return from_dict(hint, value, sources, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{sources.of(key)}: '{key}' = {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise refuse("a list")
        (item_hint,) = typing.get_args(hint)
        return [coerce(item_hint, item, sources, key) for item in value]
    if origin is tuple:
        item_hints = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(item_hints):
            raise refuse(f"a list of {len(item_hints)}")
        return tuple(coerce(item_hint, item, sources, key) for item_hint, item in zip(item_hints, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise refuse("a table")
        key_hint, value_hint = typing.get_args(hint)
        return {coerce(key_hint, k, sources, f"{key} key"): coerce(value_hint, v, sources, f"{key}.{k}")
                for k, v in value.items()}
    if hint is int and isinstance(value, bool):  # TOML's true is not a count
        raise refuse("int")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise refuse(hint.__name__)
    return value


def describe_tables(cls: type) -> str:
    """Each table of the config dataclass `cls` (and the tables inside it), with what it holds and its keys:
    the body of `train.py --help`."""
    lines = []

    def walk(table: type, name: str) -> None:
        hints = typing.get_type_hints(table)
        keys = [f.name for f in dataclasses.fields(table) if not dataclasses.is_dataclass(hints[f.name])]
        what = inspect.getdoc(table).split("\n")[0]
        lines.extend(textwrap.wrap(f"[{name}]  {what}", width=110, initial_indent="  ", subsequent_indent=" " * 6))
        lines.extend(textwrap.wrap(", ".join(keys), width=110, initial_indent=" " * 6, subsequent_indent=" " * 6))
        for f in dataclasses.fields(table):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{name}.{f.name}")

    for f in dataclasses.fields(cls):
        walk(typing.get_type_hints(cls)[f.name], f.name)
    return "\n".join(lines)


# ---- The training run's settings: every field appears in configs/*.toml -------------------------------

@dataclass
class ModelSettings:
    """The checkpoint, and how it is held in memory."""

    path: str = ""  # Hugging Face checkpoint directory (config.json, safetensors, tokenizer)
    mixed_precision: bool = True  # bf16 compute with fp32 master weights and reductions (GPU and CPU)
    activation_checkpointing: bool = False  # recompute each block in backward
    freeze_vision: bool = False  # Qwen2.5-VL: keep the vision tower fixed during RL
    # Training state in host memory: "optimizer" moves AdamW's moments there between updates, "all" keeps the
    # parameter, gradient and AdamW shards there (FSDP2's CPUOffloadPolicy, the optimizer step on the CPU; GPU
    # only); either frees the sampler's weights (and a compiled sampler's cache) during the update
    offload: Literal["none", "optimizer", "all"] = "none"


@dataclass
class DataSettings:
    """The training rows, how they are read, and how many a step takes."""

    train_files: list[str] = field(default_factory=list)  # JSONL / JSON / Parquet files; globs allowed
    # rows: {question, answer, image?} in the fields below | messages: the authors' OpenRLHF rows, a chat of
    # one user message (text and image parts) in question_field and the gold answer in answer_field
    format: RowFormat = "rows"
    question_field: str = "question"  # format = messages: the chat's field (their --input_key, "message")
    answer_field: str = "answer"
    image_field: str = "image"  # path(s) relative to the data file or embedded image(s); absent or null for text rows
    max_rows: int = ranged(0, ">= 0")  # train on a random subset of this many rows of train_files; 0 = all rows
    subset_seed: int = ranged(0, ">= 0")  # which subset max_rows draws (apart from seed, so that runs of several seeds share it)
    prompts_per_step: int = ranged(64, ">= 1")  # global batch of questions per step (split over ranks)
    epochs: int = ranged(2, ">= 1")
    max_prompt_tokens: int = ranged(2048, ">= 1")  # longer prompts are an error naming the row
    # Image resizing bounds (Qwen2.5-VL); 0 keeps the checkpoint's preprocessor_config.json value.
    min_pixels: int = ranged(0, ">= 0")  # policy prompts' images are scaled up to at least this many pixels
    max_pixels: int = ranged(0, ">= 0")  # ... and down to at most this many
    judge_max_pixels: int = ranged(0, ">= 0")  # max_pixels of recycled (judge and reflection) prompts; 0 = max_pixels
    seed: int = ranged(0, ">= 0")  # data order, sampling and recycling draws all derive from (seed, step, rank)

    def __post_init__(self):
        check_ranges(self)
        for bound in ("max_pixels", "judge_max_pixels"):
            if self.min_pixels and getattr(self, bound) and getattr(self, bound) < self.min_pixels:
                raise SettingError(type(self).__name__, bound, getattr(self, bound),
                                   f"must be >= data.min_pixels = {self.min_pixels}", others=("data.min_pixels",))


@dataclass
class RolloutSettings(Sampling):
    """How responses are sampled: the knobs of spark.generation.sampler.Sampling, the group size and the engine."""

    max_new_tokens: int = ranged(768, ">= 1")
    n: int = ranged(8, ">= 1")  # rollouts per prompt (group size)
    batch_size: int = ranged(256, ">= 1")  # sequences per sampler call
    compile: bool = False  # torch.compile the decode step (CUDA graphs on CUDA; fused small ops on CPU)
    # DAPO's dynamic sampling: policy groups whose rewards are all equal (no gradient) are dropped and more prompts
    # sampled until data.prompts_per_step groups are left, in at most max_sampling_rounds rounds
    dynamic_sampling: bool = False
    max_sampling_rounds: int = ranged(3, ">= 1")  # rounds of prompts_per_step prompts; then the batch trains as it is
    # ranks that sample together, each holding 1/T of the sampler's weights and KV cache (by heads; the vision
    # tower whole) and sampling the union of their prompts: spark.generation.tensor_parallel. Divides a node's GPUs
    tensor_parallel: int = ranged(1, ">= 1")


@dataclass
class LossSettings:
    """The policy loss, the KL to the reference, advantages, and how a batch is cut into optimizer steps."""

    policy_loss: str = "grpo"  # a name in spark.rl.losses.POLICY_LOSSES: grpo (token-level clipped surrogate) | gspo (sequence-level)
    kl_coef: float = ranged(0.001, ">= 0")  # lambda of the KL to the frozen reference, in the loss
    kl_kind: KLKind = "k3"  # k1 | k2 | k3
    # The ratio is clipped to [1 - clip_low, 1 + clip_high]: clip_low = 0 would stop a token with a negative
    # advantage from learning as soon as its probability fell at all, 1 would never clip (a ratio is > 0).
    clip_low: float = ranged(0.2, "(0, 1)")
    clip_high: float = ranged(0.2, "> 0")  # > clip_low is clip-higher
    dual_clip: float = ranged(0.0, "> 1", zero="off")  # > 1 enables dual-clip; 0 = off
    gspo_clip_low: float = ranged(3e-4, "(0, 1)")  # gspo: the sequence ratio is clipped to [1 - gspo_clip_low, 1 + gspo_clip_high]
    gspo_clip_high: float = ranged(4e-4, "> 0")
    # token-mean | seq-mean-token-mean (gspo needs it) | seq-mean-token-sum-norm (Dr. GRPO: token sums over
    # rollout.max_new_tokens)
    aggregation: Aggregation = "token-mean"
    advantage_scale: AdvantageScale = "group"  # group | batch | none (Dr. GRPO)
    # Truncated importance sampling: the policy loss weighted per token by min(pi_old / pi_sampler, tis_cap)
    tis_cap: float = ranged(0.0, ">= 1", zero="off")
    # population: (r - mean) / sqrt(var + eps); unbiased: (r - mean) / (sample std + eps), the authors' code
    advantage_std: AdvantageStd = "population"
    advantage_eps: float = ranged(1e-6, "> 0")  # > 0: a group of equal rewards has std 0
    mask_truncated: bool = False  # responses cut at max_new_tokens carry no loss
    mini_batch_size: int = ranged(0, ">= 0")  # rollouts per optimizer step, over all ranks; 0 = the whole batch in one step
    # The order mini-batches are cut from, per pass: groups (a prompt's responses together, its prompt packed
    # once; verl) | rollouts (each on its own; the authors' OpenRLHF)
    mini_batch_order: Literal["groups", "rollouts"] = "groups"
    ppo_epochs: int = ranged(1, ">= 1")  # passes over each batch (each mini-batch an optimizer step)
    micro_batch_tokens: int = ranged(8192, ">= 1")  # packed tokens per forward/backward
    logprob_chunk: int = ranged(1024, ">= 1")  # tokens per fp32 logits chunk

    def __post_init__(self):
        if self.policy_loss not in POLICY_LOSSES:
            raise SettingError(type(self).__name__, "policy_loss", self.policy_loss,
                               f"is not one of {', '.join(map(repr, POLICY_LOSSES))}")
        check_ranges(self)
        if self.policy_loss == "gspo" and self.aggregation != "seq-mean-token-mean":
            raise SettingError(type(self).__name__, "aggregation", self.aggregation,
                               "must be 'seq-mean-token-mean' with loss.policy_loss = 'gspo' (a sequence ratio is "
                               "averaged per sequence)", others=("loss.policy_loss",))


@dataclass
class RewardSettings:
    """How the rule reward reads a response's answer."""

    # strict: the answer is the last \boxed{}, the format the prompt asks for, so the policy is rewarded for
    # following it; lenient: found as a human grader would (the default of evaluation and TTS); first: the
    # first \boxed{}, as the authors' evaluation scripts read it
    answer_mode: AnswerMode = "strict"
    # DAPO's overlong shaping: a response longer than rollout.max_new_tokens - overlong_buffer tokens loses up to
    # overlong_penalty, linearly over the buffer; 0 = off
    overlong_buffer: int = ranged(0, ">= 0")
    overlong_penalty: float = ranged(1.0, ">= 0")

    def __post_init__(self):
        check_ranges(self)


@dataclass
class OptimSettings:
    """AdamW and its learning-rate schedule."""

    lr: float = ranged(5e-7, "> 0")
    betas: tuple[float, float] = ranged((0.9, 0.95), "[0, 1)")
    weight_decay: float = ranged(0.0, ">= 0")
    warmup_ratio: float = ranged(0.03, "[0, 1]")  # linear warm-up over this fraction of the steps
    min_lr_ratio: float = ranged(0.1, "[0, 1]")  # cosine decay to lr * min_lr_ratio
    grad_clip: float = ranged(1.0, "> 0")  # the gradient's global norm is clipped to this

    def __post_init__(self):
        check_ranges(self)


@dataclass
class SparkSettings:
    """What is recycled from the rollouts into judge and reflection prompts, and how it is trained."""

    mode: Mode = "spark"  # policy-only | reward-only | policy+reward | spark (the paper's ablation rows)
    schedule: Literal["separate", "mixed"] = "separate"  # separate: recycled update right after the policy update; mixed: into the next batch
    # per task of spark.tasks.table.TASKS; a task left out keeps its default weight (the table's)
    task_weights: dict[str, float] = ranged(rule=">= 0", factory=dict)
    recycle: RecycleConfig = field(default_factory=RecycleConfig)  # rules; kinds off/on also follow `mode`
    # Recycled prompts per update, over all ranks: trained in full batches once this many wait, the rest
    # carried to later steps (the authors' 64); 0 = each step's recycled prompts all at once
    recycled_batch: int = ranged(0, ">= 0")

    def __post_init__(self):
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise SettingError(type(self).__name__, "task_weights key", unknown[0],
                               f"is not one of {', '.join(map(repr, TASKS))}")
        self.task_weights = {**{name: spec.weight for name, spec in TASKS.items()}, **self.task_weights}
        check_ranges(self)
        if self.recycle.max_per_kind == 0:  # a rank's share of the cap may be 0 (Trainer), the run's may not
            raise SettingError(type(self).__name__, "recycle.max_per_kind", 0,
                               "must be >= 1 (unset: no cap; spark.mode = policy-only recycles nothing)")


@dataclass
class RunSettings:
    """Where the run writes, how long it runs, and what it saves, evaluates and checks on the way."""

    out_dir: str = "runs/default"
    max_steps: int = ranged(0, ">= 0")  # 0 = epochs over the data
    save_every: int = ranged(50, ">= 0")  # distributed checkpoint every K steps (0 = only at the end)
    keep_last: int = ranged(3, ">= 1")
    export_every: int = ranged(0, ">= 0")  # Hugging Face export every M steps (0 = only at the end)
    sample_every: int = ranged(10, ">= 0")  # log sample completions as text every K steps (0 = never)
    eval_every: int = ranged(0, ">= 0")  # held-out evaluation every K steps (0 = off)
    eval_files: list[str] = field(default_factory=list)  # held-out rows {question, answer} for eval_every
    judge_eval_files: list[str] = field(default_factory=list)  # held-out pointwise rows {question, answer, label}
    eval_max_new_tokens: int = ranged(256, ">= 1")
    # auto: resume from the latest checkpoint, which must be of the same run (seed, model, data files, n,
    # prompts_per_step); force: resume even when those changed
    resume: Literal["auto", "force"] = "auto"
    # On GPU the run starts with spark.plan's memory plan; refuse: stop when it says the config does not fit
    # (naming settings that would); warn: print that and go on (the plan is an upper bound)
    memory_check: Literal["refuse", "warn"] = "refuse"
    peak_tflops: float = ranged(0.0, ">= 0")  # per GPU, for MFU; 0 = spark.distributed.flops.PEAK_TFLOPS by device name
    max_skipped_steps: int = ranged(3, ">= 0")  # optimizer steps skipped in a row (non-finite loss or grad norm) before the run stops
    collective_timeout_s: int = ranged(1800, ">= 1")  # a rank waiting this long in a collective (e.g. on a dead peer) fails
    # Alarms, each printed once when it starts to hold (and in the metrics, alarm/*); 0 = off:
    alarm_entropy_below: float = ranged(0.0, "> 0", zero="off")  # the policy update's mean token entropy below this (collapse)
    alarm_entropy_above: float = ranged(0.0, "> 0", zero="off")  # ... above this (the policy drifting to noise)
    alarm_logp_mismatch_above: float = ranged(0.0, "> 0", zero="off")  # mean |trainer - sampler| token log-prob above this

    def __post_init__(self):
        check_ranges(self)
        if self.eval_every and not (self.eval_files or self.judge_eval_files):
            raise SettingError(type(self).__name__, "eval_every", self.eval_every,
                               "evaluates nothing: set run.eval_files or run.judge_eval_files (or eval_every = 0)",
                               others=("run.eval_files", "run.judge_eval_files"))


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
            raise SettingError(type(self).__name__, "loss.mini_batch_size", size,
                               f"must divide the batch of data.prompts_per_step x rollout.n = {batch} rollouts",
                               others=("data.prompts_per_step", "rollout.n"))
        if self.reward.overlong_buffer >= self.rollout.max_new_tokens:
            raise SettingError(type(self).__name__, "reward.overlong_buffer", self.reward.overlong_buffer,
                               f"must be < rollout.max_new_tokens = {self.rollout.max_new_tokens}",
                               others=("rollout.max_new_tokens",))


def config_hash(config: TrainConfig) -> str:
    """A short fingerprint of every setting, recorded in each checkpoint's manifest."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:16]
