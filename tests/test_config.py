"""Config errors are caught when the file is loaded, naming the file, the key, the value and what is allowed."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from spark.config import ConfigError, TrainConfig, load_config
from spark.distributed.checkpointing import check_same_run
from spark.errors import SettingError
from spark.evaluation import EvalConfig
from spark.generation.sampler import Sampling

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[loss]\nkl_coef = 0.0\n[spark]\nmode = "spark"\n')
    return path


@pytest.mark.parametrize("override, key, allowed", [
    ("spark.schedule=seperate", "spark.schedule", "'separate', 'mixed'"),
    ("spark.mode=spak", "spark.mode", "'policy-only', 'reward-only', 'policy+reward', 'spark'"),
    ("loss.kl_kind=k4", "loss.kl_kind", "'k1', 'k2', 'k3'"),  # caught although kl_coef = 0 in the file
    ("loss.aggregation=token-sum", "loss.aggregation", "'token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'"),
    ("loss.advantage_scale=groups", "loss.advantage_scale", "'group', 'batch', 'none'"),
    ("spark.recycle.content=answers", "spark.recycle.content", "'answer', 'cot', 'both'"),
    ("run.resume=always", "run.resume", "'auto', 'force'"),
    ("reward.answer_mode=loose", "reward.answer_mode", "'strict', 'lenient', 'first'"),
    ("data.format=message", "data.format", "'rows', 'messages'"),
    ("loss.policy_loss=ppo", "loss.policy_loss", "'grpo', 'gspo'"),
])
def test_a_misspelt_choice_names_the_command_line_key_value_and_choices(run_file, override, key, allowed):
    value = override.split("=")[1]
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, run_file, [override])
    assert str(error.value) == f"command line: '{key}' = '{value}' is not one of {allowed}"


def test_a_mistake_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[spark]\nschedule = "seperate"\n')
    with pytest.raises(ConfigError, match=r"^.*run\.toml: 'spark\.schedule' = 'seperate' is not one of"):
        load_config(TrainConfig, path)
    # The file's table is fine; the override's key is not.
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'spark\.schedul' \(known: "):
        load_config(TrainConfig, path, ["spark.schedule=mixed", "spark.schedul=mixed"])
    path.write_text("[spark]\nschedul = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'spark\.schedul' \(known: "):
        load_config(TrainConfig, path, ["spark.mode=spark"])
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'none.toml'}: config file not found$"):
        load_config(TrainConfig, tmp_path / "none.toml")


def test_a_misspelt_task_weight_key(run_file):
    with pytest.raises(ConfigError, match=r"^command line: 'spark\.task_weights key' = 'pointwize' is not one of "
                                          r"'policy', 'pointwise', 'pairwise', 'reflection'"):
        load_config(TrainConfig, run_file, ["spark.task_weights={policy=1.0, pointwize=0.5}"])
    # A partial table (or one key on the command line) keeps the other tasks' weight of 1.
    weights = load_config(TrainConfig, run_file, ["spark.task_weights={policy=1, pairwise=0.5}"]).spark.task_weights
    assert weights == {"policy": 1.0, "pointwise": 1.0, "pairwise": 0.5, "reflection": 1.0}
    weights = load_config(TrainConfig, None, ["spark.task_weights.reflection=2.0"]).spark.task_weights
    assert weights == {"policy": 1.0, "pointwise": 1.0, "pairwise": 1.0, "reflection": 2.0}


# Every numeric setting of TrainConfig: an override out of its range, and what the error says after the source.
OUT_OF_RANGE = {
    "data.max_rows": ("data.max_rows=-1", "'data.max_rows' = -1 must be >= 0"),
    "data.subset_seed": ("data.subset_seed=-1", "'data.subset_seed' = -1 must be >= 0"),
    "data.prompts_per_step": ("data.prompts_per_step=0", "'data.prompts_per_step' = 0 must be >= 1"),
    "data.epochs": ("data.epochs=0", "'data.epochs' = 0 must be >= 1"),
    "data.max_prompt_tokens": ("data.max_prompt_tokens=0", "'data.max_prompt_tokens' = 0 must be >= 1"),
    "data.min_pixels": ("data.min_pixels=-1", "'data.min_pixels' = -1 must be >= 0"),
    "data.max_pixels": ("data.max_pixels=-1", "'data.max_pixels' = -1 must be >= 0"),
    "data.judge_max_pixels": ("data.judge_max_pixels=-1", "'data.judge_max_pixels' = -1 must be >= 0"),
    "data.seed": ("data.seed=-1", "'data.seed' = -1 must be >= 0"),
    "rollout.max_new_tokens": ("rollout.max_new_tokens=0", "'rollout.max_new_tokens' = 0 must be >= 1"),
    "rollout.temperature": ("rollout.temperature=-1", "'rollout.temperature' = -1.0 must be >= 0"),
    "rollout.top_p": ("rollout.top_p=2", "'rollout.top_p' = 2.0 must be in (0, 1]"),
    "rollout.top_k": ("rollout.top_k=-1", "'rollout.top_k' = -1 must be >= 0"),
    "rollout.repetition_penalty": ("rollout.repetition_penalty=0", "'rollout.repetition_penalty' = 0.0 must be > 0"),
    "rollout.n": ("rollout.n=0", "'rollout.n' = 0 must be >= 1"),
    "rollout.batch_size": ("rollout.batch_size=0", "'rollout.batch_size' = 0 must be >= 1"),
    "rollout.max_sampling_rounds": ("rollout.max_sampling_rounds=0", "'rollout.max_sampling_rounds' = 0 must be >= 1"),
    "reward.overlong_buffer": ("reward.overlong_buffer=-1", "'reward.overlong_buffer' = -1 must be >= 0"),
    "reward.overlong_penalty": ("reward.overlong_penalty=-1", "'reward.overlong_penalty' = -1.0 must be >= 0"),
    "rollout.tensor_parallel": ("rollout.tensor_parallel=0", "'rollout.tensor_parallel' = 0 must be >= 1"),
    "loss.kl_coef": ("loss.kl_coef=-1", "'loss.kl_coef' = -1.0 must be >= 0"),
    "loss.clip_low": ("loss.clip_low=1.5", "'loss.clip_low' = 1.5 must be in (0, 1)"),
    "loss.clip_high": ("loss.clip_high=0", "'loss.clip_high' = 0.0 must be > 0"),
    "loss.dual_clip": ("loss.dual_clip=0.5", "'loss.dual_clip' = 0.5 must be 0 (off) or > 1"),
    "loss.gspo_clip_low": ("loss.gspo_clip_low=1", "'loss.gspo_clip_low' = 1.0 must be in (0, 1)"),
    "loss.gspo_clip_high": ("loss.gspo_clip_high=0", "'loss.gspo_clip_high' = 0.0 must be > 0"),
    "loss.tis_cap": ("loss.tis_cap=0.5", "'loss.tis_cap' = 0.5 must be 0 (off) or >= 1"),
    "loss.advantage_eps": ("loss.advantage_eps=0", "'loss.advantage_eps' = 0.0 must be > 0"),
    "loss.mini_batch_size": ("loss.mini_batch_size=-1", "'loss.mini_batch_size' = -1 must be >= 0"),
    "loss.ppo_epochs": ("loss.ppo_epochs=0", "'loss.ppo_epochs' = 0 must be >= 1"),
    "loss.micro_batch_tokens": ("loss.micro_batch_tokens=0", "'loss.micro_batch_tokens' = 0 must be >= 1"),
    "loss.logprob_chunk": ("loss.logprob_chunk=0", "'loss.logprob_chunk' = 0 must be >= 1"),
    "optim.lr": ("optim.lr=-1", "'optim.lr' = -1.0 must be > 0"),
    "optim.betas": ("optim.betas=[0.9, 1.0]", "'optim.betas' = (0.9, 1.0) must be in [0, 1) each"),
    "optim.weight_decay": ("optim.weight_decay=-0.1", "'optim.weight_decay' = -0.1 must be >= 0"),
    "optim.warmup_ratio": ("optim.warmup_ratio=1.5", "'optim.warmup_ratio' = 1.5 must be in [0, 1]"),
    "optim.min_lr_ratio": ("optim.min_lr_ratio=-0.1", "'optim.min_lr_ratio' = -0.1 must be in [0, 1]"),
    "optim.grad_clip": ("optim.grad_clip=-1", "'optim.grad_clip' = -1.0 must be > 0"),
    "spark.task_weights": ("spark.task_weights.policy=-1", "'spark.task_weights.policy' = -1.0 must be >= 0"),
    "spark.recycled_batch": ("spark.recycled_batch=-1", "'spark.recycled_batch' = -1 must be >= 0"),
    "spark.recycle.mixed_pairwise_prob": ("spark.recycle.mixed_pairwise_prob=2",
                                          "'spark.recycle.mixed_pairwise_prob' = 2.0 must be in [0, 1]"),
    "spark.recycle.mixed_pointwise_correct_prob": (
        "spark.recycle.mixed_pointwise_correct_prob=-0.5",
        "'spark.recycle.mixed_pointwise_correct_prob' = -0.5 must be in [0, 1]"),
    "spark.recycle.reflection_cot_prob": ("spark.recycle.reflection_cot_prob=1.5",
                                          "'spark.recycle.reflection_cot_prob' = 1.5 must be in [0, 1]"),
    "spark.recycle.judge_to_reflection": ("spark.recycle.judge_to_reflection=-1",
                                          "'spark.recycle.judge_to_reflection' = -1.0 must be >= 0"),
    "spark.recycle.max_per_kind": ("spark.recycle.max_per_kind=0", "'spark.recycle.max_per_kind' = 0 must be >= 1 "
                                   "(unset: no cap; spark.mode = policy-only recycles nothing)"),
    "spark.recycle.pointwise_ab_prob": ("spark.recycle.pointwise_ab_prob=1.01",
                                        "'spark.recycle.pointwise_ab_prob' = 1.01 must be in [0, 1]"),
    "spark.recycle.reflection_says_wrong_prob": ("spark.recycle.reflection_says_wrong_prob=1.5",
                                                 "'spark.recycle.reflection_says_wrong_prob' = 1.5 must be in [0, 1]"),
    "run.max_steps": ("run.max_steps=-5", "'run.max_steps' = -5 must be >= 0"),
    "run.save_every": ("run.save_every=-1", "'run.save_every' = -1 must be >= 0"),
    "run.keep_last": ("run.keep_last=0", "'run.keep_last' = 0 must be >= 1"),
    "run.export_every": ("run.export_every=-1", "'run.export_every' = -1 must be >= 0"),
    "run.sample_every": ("run.sample_every=-1", "'run.sample_every' = -1 must be >= 0"),
    "run.eval_every": ("run.eval_every=-1", "'run.eval_every' = -1 must be >= 0"),
    "run.eval_max_new_tokens": ("run.eval_max_new_tokens=0", "'run.eval_max_new_tokens' = 0 must be >= 1"),
    "run.peak_tflops": ("run.peak_tflops=-1", "'run.peak_tflops' = -1.0 must be >= 0"),
    "run.max_skipped_steps": ("run.max_skipped_steps=-1", "'run.max_skipped_steps' = -1 must be >= 0"),
    "run.collective_timeout_s": ("run.collective_timeout_s=0", "'run.collective_timeout_s' = 0 must be >= 1"),
    "run.alarm_entropy_below": ("run.alarm_entropy_below=-1", "'run.alarm_entropy_below' = -1.0 must be 0 (off) or > 0"),
    "run.alarm_entropy_above": ("run.alarm_entropy_above=-1", "'run.alarm_entropy_above' = -1.0 must be 0 (off) or > 0"),
    "run.alarm_logp_mismatch_above": ("run.alarm_logp_mismatch_above=-1",
                                      "'run.alarm_logp_mismatch_above' = -1.0 must be 0 (off) or > 0"),
}


def numeric_settings(cls: type, prefix: str = "") -> set[str]:
    """The dotted keys of every int or float setting of a config dataclass (also in optionals, tuples and dicts)."""
    keys = set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys |= numeric_settings(hint, f"{prefix}{f.name}.")
            continue
        leaves = {a for arg in typing.get_args(hint) or (hint,) for a in typing.get_args(arg) or (arg,)}
        if leaves & {int, float}:
            keys.add(prefix + f.name)
    return keys


def test_every_numeric_setting_has_a_range_checked_at_load(tmp_path):
    assert set(OUT_OF_RANGE) == numeric_settings(TrainConfig)  # a new setting needs its range, and a line here
    for override, message in OUT_OF_RANGE.values():
        with pytest.raises(ConfigError) as error:
            load_config(TrainConfig, None, [override])
        assert str(error.value) == f"command line: {message}"
        # The same value in a file names the file.
        (key, value), path = override.split("=", 1), tmp_path / "bad.toml"
        *table, name = key.split(".")
        path.write_text(f"[{'.'.join(table)}]\n{name} = {value}\n")
        with pytest.raises(ConfigError) as error:
            load_config(TrainConfig, path)
        assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=nan"], "'optim.lr' = nan must be a finite number"),
    (["rollout.temperature=inf"], "'rollout.temperature' = inf must be a finite number"),
    (["rollout.n=true"], "'rollout.n' must be int, got True"),
    (["optim.betas=[0.9]"], "'optim.betas' must be a list of 2, got [0.9]"),
    (["data.train_files=[1]"], "'data.train_files' must be str, got 1"),
    (["loss.mini_batch_size=48"], "'loss.mini_batch_size' = 48 must divide the batch of data.prompts_per_step x "
                                  "rollout.n = 512 rollouts"),
    (["data.min_pixels=1000", "data.max_pixels=500"], "'data.max_pixels' = 500 must be >= data.min_pixels = 1000"),
    (["data.min_pixels=1000", "data.judge_max_pixels=500"],
     "'data.judge_max_pixels' = 500 must be >= data.min_pixels = 1000"),
    (["run.eval_every=5"], "'run.eval_every' = 5 evaluates nothing: set run.eval_files or run.judge_eval_files "
                           "(or eval_every = 0)"),
    (["loss.policy_loss=gspo"], "'loss.aggregation' = 'token-mean' must be 'seq-mean-token-mean' with "
                                "loss.policy_loss = 'gspo' (a sequence ratio is averaged per sequence)"),
    (["rollout.max_new_tokens=64", "reward.overlong_buffer=64"],
     "'reward.overlong_buffer' = 64 must be < rollout.max_new_tokens = 64"),
    (["optim=3", "optim.lr=1"], "'optim.lr': 'optim' is not a table"),
    (["optimlr"], "'optimlr' is not section.key=value"),
])
def test_values_and_rules_across_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, None, overrides)
    assert str(error.value) == f"command line: {message}"


def test_a_rule_across_settings_names_the_command_line_when_an_override_broke_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[loss]\nmini_batch_size = 64\n")
    assert load_config(TrainConfig, path).loss.mini_batch_size == 64
    with pytest.raises(ConfigError, match=r"^command line: 'loss\.mini_batch_size' = 64 must divide the batch of "
                                          r"data\.prompts_per_step x rollout\.n = 36 rollouts$"):
        load_config(TrainConfig, path, ["data.prompts_per_step=6", "rollout.n=6"])
    path.write_text("[loss]\nmini_batch_size = 48\n")
    with pytest.raises(ConfigError, match=rf"^{path}: 'loss\.mini_batch_size' = 48 must divide"):
        load_config(TrainConfig, path, ["run.max_steps=3"])


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(SettingError, match=r"^Sampling\.temperature = -1 must be >= 0$"):
        Sampling(temperature=-1)
    with pytest.raises(SettingError, match=r"^Sampling\.top_p = 0.0 must be in \(0, 1\]$"):
        Sampling(top_p=0.0)
    with pytest.raises(SettingError, match=r"^EvalConfig\.n = 0 must be >= 1$"):
        EvalConfig(n=0)


def test_a_checkpoint_resumes_only_its_own_run(tmp_path):
    saved = {"seed": 0, "model": "ckpt", "train_files": ["a.jsonl"], "n": 8, "prompts_per_step": 64}
    check_same_run(saved, dict(saved), tmp_path, force=False)
    changed = {**saved, "seed": 1, "n": 4}
    with pytest.raises(ValueError, match=r"of another run \(seed: 0 -> 1; n: 8 -> 4\); resume it with run.resume=force"):
        check_same_run(saved, changed, tmp_path, force=False)
    check_same_run(saved, changed, tmp_path, force=True)


def test_a_subset_is_part_of_the_run_and_all_rows_resume_older_checkpoints(run_file, tmp_path):
    from spark.trainer import run_identity

    whole = run_identity(load_config(TrainConfig, run_file, ["data.subset_seed=5"]))
    assert whole["subset"] is None  # the subset seed draws nothing without max_rows
    subset = run_identity(load_config(TrainConfig, run_file, ["data.max_rows=19000", "data.subset_seed=2"]))
    assert subset == {**whole, "subset": {"max_rows": 19000, "subset_seed": 2}}
    before_subsets = {key: value for key, value in whole.items() if key != "subset"}
    check_same_run(before_subsets, whole, tmp_path, force=False)
    with pytest.raises(ValueError, match=r"another run \(subset: \{'max_rows': 19000, 'subset_seed': 2\} -> None\)"):
        check_same_run(subset, whole, tmp_path, force=False)


def test_without_tomllib_defaults_load_and_toml_is_refused_by_name():
    """Python 3.10 without the tomli backport (a bare device image): spark.config imports, the defaults load,
    and only reading TOML says what it needs."""
    script = ("import sys; sys.modules['tomllib'] = sys.modules['tomli'] = None\n"
              "from spark.config import ConfigError, TrainConfig, load_config\n"
              "assert load_config(TrainConfig) == TrainConfig()\n"
              "try:\n    load_config(TrainConfig, None, ['run.max_steps=2'])\n"
              "except ConfigError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "reading a TOML config or overrides needs Python 3.11 or the tomli package"
