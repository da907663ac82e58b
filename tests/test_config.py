"""Config errors are caught when the file is loaded, naming the file, the key, the value and what is allowed."""

import subprocess
import sys
from pathlib import Path

import pytest

from spark.checkpointing import check_same_run
from spark.config import ConfigError, TrainConfig, load_config

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
    ("loss.aggregation=token-sum", "loss.aggregation", "'token-mean', 'seq-mean-token-mean'"),
    ("loss.advantage_scale=groups", "loss.advantage_scale", "'group', 'batch', 'none'"),
    ("spark.recycle.content=answers", "spark.recycle.content", "'answer', 'cot', 'both'"),
    ("run.resume=always", "run.resume", "'auto', 'force'"),
    ("reward.answer_mode=loose", "reward.answer_mode", "'strict', 'lenient', 'first'"),
    ("data.format=message", "data.format", "'rows', 'messages'"),
])
def test_a_misspelt_choice_names_file_key_value_and_choices(run_file, override, key, allowed):
    value = override.split("=")[1]
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, run_file, [override])
    assert str(error.value) == f"{run_file}: '{key}' = '{value}' is not one of {allowed}"


def test_a_misspelt_task_weight_key(run_file):
    with pytest.raises(ConfigError, match=r"run\.toml: 'spark\.task_weights key' = 'pointwize' is not one of "
                                          r"'policy', 'pointwise', 'pairwise', 'reflection'"):
        load_config(TrainConfig, run_file, ["spark.task_weights={policy=1.0, pointwize=0.5}"])
    # A partial table (or one key on the command line) keeps the other tasks' weight of 1.
    weights = load_config(TrainConfig, run_file, ["spark.task_weights={policy=1, pairwise=0.5}"]).spark.task_weights
    assert weights == {"policy": 1.0, "pointwise": 1.0, "pairwise": 0.5, "reflection": 1.0}
    weights = load_config(TrainConfig, None, ["spark.task_weights.reflection=2.0"]).spark.task_weights
    assert weights == {"policy": 1.0, "pointwise": 1.0, "pairwise": 1.0, "reflection": 2.0}


@pytest.mark.parametrize("override, message", [
    ("rollout.n=0", r"\[rollout\] n, batch_size and max_new_tokens must be >= 1"),
    ("rollout.repetition_penalty=0", r"\[rollout\] repetition_penalty must be > 0, got 0.0"),
    ("loss.dual_clip=0.5", r"\[loss\] dual_clip must be 0 \(off\) or > 1, got 0.5"),
    ("loss.kl_coef=-1", r"\[loss\] kl_coef must be >= 0, got -1.0"),
    ("loss.clip_low=1", r"\[loss\] clip_low must be in \[0, 1\) and clip_high >= 0, got 1.0 and 0.2"),
    ("spark.task_weights.policy=-1", r"\[spark\] task weights must be >= 0"),
    ("run.collective_timeout_s=0", r"\[run\] max_skipped_steps must be >= 0 and collective_timeout_s >= 1"),
    ("spark.recycle.mixed_pairwise_prob=2", r"\[spark.recycle\] RecycleConfig.mixed_pairwise_prob must be in \[0, 1\]"),
    ("data.max_rows=-1", r"\[data\] max_rows must be >= 0 \(0 = all rows\), got -1"),
    ("spark.recycle.reflection_says_wrong_prob=1.5",
     r"\[spark.recycle\] RecycleConfig.reflection_says_wrong_prob must be in \[0, 1\], got 1.5"),
])
def test_out_of_range_values_name_the_file_and_table(run_file, override, message):
    with pytest.raises(ConfigError, match=f"run.toml: {message}"):
        load_config(TrainConfig, run_file, [override])


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
