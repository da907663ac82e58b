"""The training loop: schedule, configs, a run end to end, rank invariance, resume, export."""

import itertools
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

import spark.trainer
from spark.config import ConfigError, TrainConfig, config_hash, load_config
from spark.distributed.checkpointing import verify
from spark.distributed.groups import World, full_state_dict
from spark.models import load_model, save_model
from spark.rl.recycle import RecycleConfig, recycled_kinds
from spark.trainer import Trainer, cosine_lr
from tests.trainer_utils import read_metrics, tiny_config, torchrun

ROOT = Path(__file__).resolve().parents[1]


def test_cosine_lr_schedule():
    assert cosine_lr(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_lr(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_ablation_modes_pick_the_recycled_kinds():
    assert recycled_kinds("policy-only", RecycleConfig()) is None
    spark = recycled_kinds("spark", RecycleConfig())
    assert (spark.pointwise, spark.pairwise, spark.reflection) == (True, True, True)
    judges = recycled_kinds("policy+reward", RecycleConfig())
    assert (judges.pointwise, judges.pairwise, judges.reflection) == (True, True, False)
    no_pairwise = recycled_kinds("spark", RecycleConfig(pairwise=False))
    assert (no_pairwise.pointwise, no_pairwise.pairwise, no_pairwise.reflection) == (True, False, True)


def scalar_steps(out_dir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_config_file_overrides_and_errors(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nlr = 1e-6\nbetas = [0.9, 0.99]\n[spark.recycle]\ncontent = "cot"\n')
    config = load_config(TrainConfig, path, ["rollout.n=4", "spark.mode=policy-only"])
    assert (config.optim.lr, config.optim.betas, config.rollout.n) == (1e-6, (0.9, 0.99), 4)
    assert (config.spark.mode, config.spark.recycle.content) == ("policy-only", "cot")
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'optim\.learning_rate'"):
        load_config(TrainConfig, path, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"^command line: 'rollout\.n' must be int, got 'many'$"):
        load_config(TrainConfig, path, ["rollout.n=many"])


def test_every_config_file_loads():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        load_config(TrainConfig, path)


def test_run_writes_metrics_checkpoint_and_export(run_files, tmp_path):
    checkpoint, data = run_files
    out = tmp_path / "run"
    # Sampled hotter than the policy, so that (seeded) groups of two mix right and wrong answers and the
    # policy gradient is not zero.
    trainer = Trainer(tiny_config(checkpoint, data, out, "rollout.temperature=1.5", "run.peak_tflops=1.0"))
    trainer.train()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["recycled/loss"])
        assert {"reward/policy", "kl", "entropy", "clip_frac", "grad_norm", "lr", "response_len/mean",
                "truncation_rate", "tokens_per_s", "time/rollout", "time/reward", "time/reference", "time/update",
                "tflops/update", "tflops/rollout", "mfu/update", "mfu/rollout", "mfu/step"} <= set(m)
        # Every sampled sequence is trained here, each prompt computed once for its rollouts in both: a token
        # costs 3 forwards in the update, 1 in the rollout and the reference, each at least 2N per token
        # computed; sharing a prompt between the n = 2 rollouts at most halves the tokens computed.
        assert m["flops_per_token/update"] == pytest.approx(3 * m["flops_per_token/rollout"])
        assert m["flops_per_token/reference"] == pytest.approx(m["flops_per_token/rollout"])
        assert m["flops_per_token/rollout"] > trainer.flop_model.matmul_params
        assert m["mfu/step"] == pytest.approx(m["tflops/step"])  # against the configured 1 TFLOP/s
    assert (out / "checkpoints" / "step_00000002" / "trainer.json").exists()
    assert (out / "samples.jsonl").read_text()
    # The export is a Hugging Face directory with changed weights, and transformers agrees on its logits.
    before, after = load_model(checkpoint), load_model(out / "export")
    assert any((a - b).abs().max() > 0 for a, b in zip(before.parameters(), after.parameters()))
    vocab = after.model.embed_tokens.num_embeddings
    input_ids = torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(out / "export").eval()(input_ids).logits
        assert (after(input_ids) - reference).abs().max() < 1e-4
    assert (out / "export" / "tokenizer.json").exists() and (out / "export" / "chat_template.jinja").exists()


def test_trainer_reads_the_authors_chat_rows_and_trains_on_a_subset(run_files, tmp_path):
    from spark.data.rows import load_questions, subset_rows
    from spark.errors import DataError
    from spark.tasks.prompts import MATH_SUFFIX, math_prompt

    checkpoint, data = run_files
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    theirs = tmp_path / "infer_data.json"
    theirs.write_text(json.dumps([{"message": json.dumps([{"role": "user", "content": [
        {"type": "text", "text": f"{row['question']}\n{MATH_SUFFIX}"}]}]), "answer": row["answer"]} for row in rows]))
    chat_rows = ['data.format="messages"', 'data.question_field="message"']
    trainer = Trainer(tiny_config(checkpoint, theirs, tmp_path / "run", *chat_rows, "data.max_rows=4",
                                  "data.subset_seed=1", "run.max_steps=0"))
    expected = subset_rows(load_questions([str(data)], prompt=math_prompt), 4, seed=1, source=str(data))
    assert [(q.prompt, q.gold) for q in trainer.questions] == [(q.prompt, q.gold) for q in expected]
    assert trainer.total_steps == 2 * 4 // 2  # 2 epochs of the 4 rows at 2 prompts a step
    with pytest.raises(DataError, match=rf"^{theirs}: data.max_rows = {len(rows) + 1} is more than the {len(rows)} rows"):
        Trainer(tiny_config(checkpoint, theirs, tmp_path / "run", *chat_rows, f"data.max_rows={len(rows) + 1}"))


def test_resume_reproduces_the_uninterrupted_run(run_files, tmp_path):
    checkpoint, data = run_files
    out = tmp_path / "run"
    config = tiny_config(checkpoint, data, out, "run.max_steps=4", "run.save_every=2", "spark.schedule=mixed")
    Trainer(config).train()
    uninterrupted = read_metrics(out)
    checkpoints = out / "checkpoints"
    manifest = json.loads((checkpoints / "step_00000004" / "manifest.json").read_text())
    assert (manifest["step"], manifest["world_size"], manifest["config_hash"]) == (4, 1, config_hash(config))
    assert manifest["files"]["trainer.json"] == (checkpoints / "step_00000004" / "trainer.json").stat().st_size
    assert {".metadata", "__0_0.distcp"} <= set(manifest["files"])
    # As if killed during a save after step 2's checkpoint, and step 4's checkpoint then cut short (a torn
    # copy): it no longer matches its manifest, so the run resumes from step 2.
    shutil.copytree(checkpoints / "step_00000004", checkpoints / "step_00000003.tmp")
    shard = checkpoints / "step_00000004" / "__0_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:size // 2])
    with pytest.warns(UserWarning, match=rf"skipping checkpoint .*step_00000004: __0_0.distcp is {size // 2} bytes, "
                                         rf"the manifest says {size}; trying the one before it"):
        resumed_run = Trainer(config)
    assert resumed_run.step == 2
    resumed_run.train()
    assert not list((out / "checkpoints").glob("*.tmp"))
    # Steps 3 and 4 were logged by the first run and again by the resumed one: each appears once.
    resumed = read_metrics(out)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    sampled = [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [step for step, _ in itertools.groupby(sampled)] == [1, 2, 3, 4]  # a sample of each task, each step
    assert scalar_steps(out, "loss") == [1, 2, 3, 4]
    for a, b in zip(uninterrupted, resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["reward/policy"] == b["reward/policy"]
    # The checkpoint is of this run: another seed or group size is an error before any model loads.
    with pytest.raises(ValueError, match=r"step_00000004 is of another run \(seed: 0 -> 1\)"):
        Trainer(tiny_config(checkpoint, data, out, "run.max_steps=4", "spark.schedule=mixed", "data.seed=1"))
    forced = Trainer(tiny_config(checkpoint, data, out, "run.max_steps=4", "rollout.n=4", "run.resume=force"))
    assert forced.step == 4


def test_a_run_at_its_last_step_says_so_and_loads_and_writes_nothing(run_files, tmp_path, capsys):
    checkpoint, data = run_files
    out = tmp_path / "run"
    Trainer(tiny_config(checkpoint, data, out, "spark.mode=policy-only")).train()
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    capsys.readouterr()
    again = Trainer(tiny_config(checkpoint, data, out, "spark.mode=policy-only"))
    assert not hasattr(again, "policy")
    assert again.train() == {}
    assert capsys.readouterr().out == f"{out} is at step 2 of 2: nothing to train; set run.max_steps or run.out_dir\n"
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == written


def test_rules_that_need_the_ranks_or_the_rows_are_checked_before_any_model_loads(run_files, tmp_path, monkeypatch):
    checkpoint, data = run_files
    with pytest.raises(ConfigError, match=r"^'model\.path' is not set: it names the Hugging Face checkpoint "):
        Trainer(load_config(TrainConfig, None, [f"data.train_files=[{json.dumps(str(data))}]"]))
    with pytest.raises(ConfigError, match=r"^8 training rows x data\.epochs = 1 give no step of "
                                          r"data\.prompts_per_step = 16 prompts$"):
        Trainer(tiny_config(checkpoint, data, tmp_path / "run", "data.prompts_per_step=16", "data.epochs=1"))
    monkeypatch.setattr(spark.trainer, "init_distributed", lambda timeout, **options: World(0, 3, torch.device("cpu")))
    with pytest.raises(ConfigError, match=r"^'data\.prompts_per_step' = 2 must be divisible by the 3 ranks$"):
        Trainer(tiny_config(checkpoint, data, tmp_path / "run"))


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(run_files, tmp_path, capfd):
    checkpoint, data = run_files
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(checkpoint, data, out, "spark.mode=policy-only", "run.max_steps=3"))
    update = trainer.update

    def update_then_ctrl_c(*args, **kwargs):
        result = update(*args, **kwargs)
        if trainer.step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    trainer.update = update_then_ctrl_c
    trainer.train()
    saved = out / "checkpoints" / "step_00000001"
    printed = capfd.readouterr()
    assert "[rank 0] SIGINT received: stopping after this step, with a checkpoint (Ctrl-C again aborts at once)" \
        in printed.err
    assert f"stopped by SIGINT after step 1: checkpoint saved to {saved}; run the same command to resume" in printed.out
    assert verify(saved) is None and [m["step"] for m in read_metrics(out)] == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_one_update_on_two_ranks_equals_one_rank_and_bf16_is_close(run_files, tmp_path):
    """Two updates on fixed policy, judge and reflection experiences (the second with KL > 0 to the reference):
    2 ranks == 1 rank in fp32; 2 ranks in bf16 mixed precision (FSDP2 MixedPrecisionPolicy over gloo) close
    to the fp32 run: 2% on the first update's metrics, 5% on the second's, after an lr-1e-3 step that moves the
    tiny policy far from the reference, and the two steps' parameter changes point the same way."""
    checkpoint, data = run_files
    results = {}
    for nproc, mixed in ((1, "false"), (2, "false"), (2, "true")):
        result = tmp_path / f"update_{nproc}_{mixed}.pt"
        torchrun(nproc, "tests/dist_update.py", str(checkpoint), str(data), str(tmp_path / f"out{nproc}{mixed}"),
                 str(result), f"model.mixed_precision={mixed}")
        results[nproc, mixed] = torch.load(result)
    one, two, bf16 = results[1, "false"], results[2, "false"], results[2, "true"]
    initial = load_model(checkpoint).state_dict()
    assert any((one["state"][k] - initial[k]).abs().max() > 1e-4 for k in initial)
    for key in initial:
        assert (one["state"][key] - two["state"][key]).abs().max() < 1e-5, key
    for update, tolerance in ((0, 0.02), (1, 0.05)):
        assert one["metrics"][update]["loss"] == pytest.approx(two["metrics"][update]["loss"], abs=1e-6)
        for key in ("loss", "kl", "grad_norm", "entropy"):
            assert bf16["metrics"][update][key] == pytest.approx(two["metrics"][update][key], rel=tolerance, abs=1e-6), \
                (update, key)
    assert two["metrics"][1]["kl"] > 0
    fp32_step, bf16_step = (torch.cat([(r["state"][k] - initial[k]).flatten() for k in initial]) for r in (two, bf16))
    assert torch.nn.functional.cosine_similarity(fp32_step, bf16_step, dim=0) > 0.98
    assert all(t.dtype == torch.float32 for t in bf16["state"].values())  # master weights stay fp32


def test_two_rank_fsdp_run(run_files, tmp_path):
    checkpoint, data = run_files
    config = tmp_path / "tiny.toml"
    config.write_text(f'[model]\npath = "{checkpoint}"\n[data]\ntrain_files = ["{data}"]\n')
    out = tmp_path / "run"
    overrides = ["data.prompts_per_step=4", "rollout.n=2", "rollout.max_new_tokens=6", "run.max_steps=2",
                 f"run.out_dir={json.dumps(str(out))}", "optim.lr=1e-3", "loss.micro_batch_tokens=40"]
    torchrun(2, "train.py", str(config), *overrides)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    before, after = load_model(checkpoint), load_model(out / "export")
    assert any((a - b).abs().max() > 0 for a, b in zip(before.parameters(), after.parameters()))
    # The 2-rank checkpoint resumes on 1 rank (DCP reshards the model and optimizer state).
    resumed = Trainer(load_config(TrainConfig, config, overrides[:3] + ["run.max_steps=3", *overrides[4:]]))
    assert resumed.step == 2
    resumed.train()
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]


def test_the_last_step_exports_once(run_files, tmp_path, monkeypatch):
    checkpoint, data = run_files
    trainer = Trainer(tiny_config(checkpoint, data, tmp_path / "run", "run.export_every=1", "spark.mode=policy-only"))
    exports = []
    monkeypatch.setattr(trainer, "export", lambda: exports.append(trainer.step))
    trainer.train()
    assert exports == [1, 2]


def test_export_keeps_the_checkpoint_dtype(run_files, tmp_path):
    """bf16 mixed precision (here on CPU): an fp32 checkpoint exports its fp32 master weights, not the bf16 of the
    sampler's copy; a bf16 checkpoint exports bf16."""
    checkpoint, data = run_files
    bf16_checkpoint = tmp_path / "bf16"
    model = load_model(checkpoint, dtype=torch.bfloat16)
    model.hf_config = {**model.hf_config, "dtype": "bfloat16"}
    save_model(model, bf16_checkpoint)
    for path, dtype in ((checkpoint, torch.float32), (bf16_checkpoint, torch.bfloat16)):
        trainer = Trainer(tiny_config(path, data, tmp_path / path.name, "model.mixed_precision=true"))
        assert trainer.rollouts.chat.model.lm_head.weight.dtype == torch.bfloat16
        trainer.export()
        exported = load_file(tmp_path / path.name / "export" / "model.safetensors")
        assert {t.dtype for t in exported.values()} == {dtype}
        master = full_state_dict(trainer.policy)
        assert torch.equal(load_model(tmp_path / path.name / "export").state_dict()["lm_head.weight"],
                           master["lm_head.weight"].to(dtype).float())
