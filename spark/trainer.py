"""The SPARK training loop: GRPO on verifiable prompts, with the same rollouts recycled into judge and
reflection prompts for the same model.

One step (every rank runs it on its own share of the prompts), `Trainer.train_step`:
  1. rollout   the policy's weights are copied into a plain (unsharded) model that samples n responses
               per prompt (`spark.rl.rollout`, through `ChatModel.complete`);
  2. reward    the rule verifier scores each response (math answers, Yes/No and A/B verdicts);
  3. update    group-normalised advantages, then the clipped surrogate + kl_coef * KL to the frozen
               reference (`spark.rl.losses.micro_batch_loss`) over packed micro-batches (`spark.rl.packing`), AdamW;
  4. recycle   the policy groups become pointwise / pairwise / reflection prompts (`spark.rl.recycle`),
               trained with the same rollout + reward + update right away (`schedule = "separate"`, the
               reference behaviour) or mixed into the next step's batch (`schedule = "mixed"`).
Every random draw derives from (seed, step, rank, purpose), and the data cursor is a pure function of
the step (`spark.data.rows.step_prompts`), so a resumed run continues exactly where the uninterrupted one
would have been.

Faults (README, "Failures and recovery"): SIGTERM / SIGUSR1 end the run after the current step and a
checkpoint (`spark.distributed.preemption`); an update whose loss or gradient norm is not finite on any rank is
skipped on every rank, and too many in a row stop the run (`NonFiniteError`); every prompt is rendered
and checked before step 1.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from spark.config import ConfigError, TrainConfig, config_hash
from spark.data.rows import Sample, load_judge_rows, load_questions, step_prompts, subset_rows
from spark.distributed.checkpointing import Checkpointer, check_same_run, export_model
from spark.distributed.flops import FlopModel, flop_metrics, peak_tflops, step_flops
from spark.distributed.groups import (
    all_gather_objects,
    copy_full_weights,
    init_distributed,
    reduce_metrics,
    shard_model,
)
from spark.distributed.metrics import MetricsLogger, PhaseTimer
from spark.distributed.offload import PhaseMemory
from spark.distributed.preemption import StopSignals
from spark.distributed.resharding import copy_to_tensor_parallel
from spark.errors import DataErrors, RunStopped, UserError
from spark.generation.chat import load_chat_model
from spark.generation.tensor_parallel import check_divisible, tensor_parallel_group
from spark.models import ModelConfig, load_model
from spark.models.attention import describe_attention
from spark.models.checkpoint import read_config
from spark.plan import check_memory
from spark.rl.alarms import Alarm, Alarms
from spark.rl.losses import group_advantages, micro_batch_loss
from spark.rl.packing import (
    MicroBatch,
    NoLossSequence,
    experience_keys,
    group_by_prompt,
    mini_batches,
    pack,
    split_by_tokens,
)
from spark.rl.recycle import (
    ABLATIONS,
    RecycleQueue,
    deal,
    label_balance,
    label_counts,
    recycle,
    recycled_kinds,
    rule_tasks,
    split_evenly,
)
from spark.rl.rollout import (
    Experience,
    Rollouts,
    by_group,
    first_of_each_task,
    heldout_metrics,
    overlong_penalty,
    rollout_groups,
    rollout_metrics,
    score,
    task_image_configs,
    varied,
)
from spark.tasks.prompts import math_prompt, pointwise_prompt
from spark.tasks.table import TASKS


class Salt(enum.IntEnum):
    """What a step's random draw is for. The values are part of a run: a resumed run must draw the same."""

    ROLLOUT = 0
    RECYCLE = 1
    MINI_BATCHES = 2
    RECYCLED_MINI_BATCHES = 3
    RECYCLED_ROLLOUT = 2**20
    SAMPLING_ROUND = 2**21  # + the round: dynamic sampling's extra prompts and their rollouts


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """One 63-bit seed per (run seed, step, rank, purpose)."""
    return random.Random(f"{seed}:{step}:{rank}:{salt}").getrandbits(63)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warm-up to 1 over `warmup_steps`, then cosine to `min_ratio`.

    warmup:  (step + 1) / warmup_steps
    decay:   min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress)), progress in [0, 1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def run_identity(config: TrainConfig) -> dict:
    """What a checkpoint's steps mean: a run resumed with any of these changed would be another run."""
    data = config.data
    # None for all rows, as a checkpoint written before subsets existed reads it (saved.get)
    subset = {"max_rows": data.max_rows, "subset_seed": data.subset_seed} if data.max_rows else None
    return {"seed": data.seed, "model": config.model.path, "train_files": list(data.train_files),
            "n": config.rollout.n, "prompts_per_step": data.prompts_per_step, "subset": subset}


class NonFiniteError(RunStopped):
    """More than run.max_skipped_steps updates in a row had a non-finite loss or gradient norm."""


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.world = init_distributed(config.run.collective_timeout_s, host_collectives=config.model.offload == "all")
        self.out_dir = Path(config.run.out_dir)
        self.ablation = ABLATIONS[config.spark.mode]
        self.recycle_rules = recycled_kinds(config.spark.mode, config.spark.recycle)
        if self.recycle_rules is not None and self.recycle_rules.max_per_kind is not None:
            # The caps count a step's samples over all ranks; each rank recycles its own groups.
            cap = split_evenly(self.recycle_rules.max_per_kind, self.world.size)[self.world.rank]
            self.recycle_rules = dataclasses.replace(self.recycle_rules, max_per_kind=cap)
        data, run = config.data, config.run
        if not config.model.path:
            raise ConfigError("'model.path' is not set: it names the Hugging Face checkpoint directory to train")
        if data.prompts_per_step % self.world.size:
            raise ConfigError(f"'data.prompts_per_step' = {data.prompts_per_step} must be divisible by the "
                              f"{self.world.size} ranks")
        rows = load_questions(data.train_files, question_field=data.question_field, answer_field=data.answer_field,
                              image_field=data.image_field, prompt=math_prompt, row_format=data.format)
        self.questions = subset_rows(rows, data.max_rows, seed=data.subset_seed, source=", ".join(data.train_files))
        self.eval_sets = {"policy": load_questions(run.eval_files, prompt=math_prompt) if run.eval_files else [],
                          "pointwise": load_judge_rows(run.judge_eval_files, render=pointwise_prompt)}
        steps = data.epochs * len(self.questions) // data.prompts_per_step
        self.total_steps = min(steps, run.max_steps) if run.max_steps else steps
        if self.total_steps < 1:
            raise ConfigError(f"{len(self.questions)} training rows x data.epochs = {data.epochs} give no step of "
                              f"data.prompts_per_step = {data.prompts_per_step} prompts")
        # The learning-rate schedule counts the policy batches' optimizer steps; recycled updates take the rate
        # of the policy update before them (so the schedule ends where planned whatever is recycled).
        self.policy_optimizer_steps = self.optimizer_steps_per_update(data.prompts_per_step * config.rollout.n)
        self.schedule_steps = self.total_steps * self.policy_optimizer_steps

        self.checkpointer = Checkpointer(self.out_dir / "checkpoints", run.keep_last)
        self.resume_from = self.checkpointer.latest()
        self.step = 0
        if self.resume_from is not None:  # before any model loads: a checkpoint of another run is an error
            saved = self.checkpointer.trainer_state(self.resume_from)
            check_same_run(saved.get("run", {}), run_identity(config), self.resume_from, force=run.resume == "force")
            self.step = saved["step"]
        if self.step >= self.total_steps:
            return  # a finished run: `train` says so, and nothing is loaded or written

        self.sampler_group = self.tensor_parallel_group()
        device = self.world.device
        if config.model.offload == "all" and device.type != "cuda":  # FSDP2's CPUOffloadPolicy needs an accelerator
            raise ConfigError("'model.offload' = \"all\" needs a GPU (FSDP2's CPUOffloadPolicy); on CPU use "
                              "\"optimizer\" or \"none\"")
        mixed = config.model.mixed_precision  # bf16 compute on CPU too: FSDP2's MixedPrecisionPolicy works with gloo
        if self.world.is_main:
            print(describe_attention(device, torch.bfloat16 if mixed else torch.float32), flush=True)
        if device.type == "cuda":
            check_memory(config, self.world.size, torch.cuda.get_device_properties(device).total_memory,
                         show=self.world.is_main)
        offload = config.model.offload == "all"  # FSDP2's CPUOffloadPolicy: the shards are made in host memory
        shard = functools.partial(shard_model, mixed_precision=mixed, methods=("logprobs",), offload=offload)
        weights_device = "cpu" if offload else device

        def prepare_policy(policy: nn.Module) -> None:
            policy.model.activation_checkpointing = config.model.activation_checkpointing
            if config.model.freeze_vision:
                policy.freeze_vision()
            shard(policy)

        # Both are sharded before their weights load: each rank reads only its own shards' rows.
        self.policy = load_model(config.model.path, device=device, prepare=prepare_policy,
                                 weights_device=weights_device).train()
        self.reference = None
        if config.loss.kl_coef > 0:
            # Frozen, so it needs no fp32 master copy: under mixed precision it is held in bf16, the dtype it
            # computes in anyway.
            self.reference = load_model(config.model.path, device=device, dtype=torch.bfloat16 if mixed else
                                        torch.float32, prepare=lambda model: shard(model.requires_grad_(False)),
                                        weights_device=weights_device)
        self.optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad],
                                           lr=config.optim.lr, betas=tuple(config.optim.betas),
                                           weight_decay=config.optim.weight_decay)
        # The sampler runs on a plain full copy (or its tensor-parallel shard), refreshed from the policy's shards
        # before every rollout.
        chat = load_chat_model(config.model.path, device=device, dtype=torch.bfloat16 if mixed else torch.float32,
                               max_batch_rows=config.rollout.batch_size, compile=config.rollout.compile,
                               tensor_parallel=self.sampler_group, sample_group=self.sampler_group)
        images = task_image_configs(chat.image_config, min_pixels=data.min_pixels, max_pixels=data.max_pixels,
                                    judge_max_pixels=data.judge_max_pixels)
        self.rollouts = Rollouts(chat, images, data.max_prompt_tokens)
        self.memory = PhaseMemory(config.model.offload, chat.model, self.optimizer)
        self.no_loss_sequence = NoLossSequence.for_model(chat.model)
        self.flop_model = FlopModel.of(self.policy)  # the global shapes (a tensor-parallel sampler holds pieces)
        self.peak_tflops = peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
                                       run.peak_tflops)
        self.check_prompts()

        self.queue = RecycleQueue()
        self.skipped_steps = self.skipped_in_a_row = 0  # updates skipped for a non-finite loss or grad norm
        self.signals = StopSignals()
        self.alarms = Alarms([Alarm("entropy_low", "entropy", run.alarm_entropy_below, False, "run.alarm_entropy_below"),
                              Alarm("entropy_high", "entropy", run.alarm_entropy_above, True, "run.alarm_entropy_above"),
                              Alarm("logp_mismatch", "logp_mismatch", run.alarm_logp_mismatch_above, True,
                                    "run.alarm_logp_mismatch_above")])
        self.resume()
        # A run resumed from an earlier checkpoint than its last logged step logs those steps again.
        self.metrics = MetricsLogger(self.out_dir, next_step=self.step + 1 if self.resume_from else 0,
                                     enabled=self.world.is_main)

    def tensor_parallel_group(self):
        """Collective: this rank's group of `rollout.tensor_parallel` sampler ranks, None for 1; a size that does
        not divide the ranks of a node or the checkpoint's heads is a ConfigError before any model loads."""
        size = self.config.rollout.tensor_parallel
        if size == 1:
            return None
        try:
            check_divisible(ModelConfig.from_hf(read_config(Path(self.config.model.path))), size)
            return tensor_parallel_group(size)
        except UserError as e:
            raise ConfigError(f"'rollout.tensor_parallel' = {size}: {e}") from None

    def copy_policy_to_sampler(self) -> None:
        """Collective: the policy's shards into the sampler (whole, or this rank's tensor-parallel pieces)."""
        self.memory.sampler_needed()
        if self.sampler_group is None:
            copy_full_weights(self.policy, self.rollouts.chat.model)
        else:
            copy_to_tensor_parallel(self.policy, self.rollouts.chat.model, self.sampler_group)

    # ---- the loop -----------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Train to the last step, or until a SIGTERM / SIGUSR1 / SIGINT (Ctrl-C): then the current step ends, a
        checkpoint is saved and train returns (the process exits 0; running it again resumes). A run already at
        its last step says so and writes nothing."""
        if self.step >= self.total_steps:
            if self.world.is_main:
                print(f"{self.out_dir} is at step {self.step} of {self.total_steps}: nothing to train; set "
                      "run.max_steps or run.out_dir", flush=True)
            return {}
        self.signals.install()
        try:
            return self.train_until_done_or_stopped()
        finally:
            self.signals.restore()

    def train_until_done_or_stopped(self) -> dict[str, float]:
        run = self.config.run
        last_eval: dict[str, float] = {}
        if run.eval_every and self.step == 0:
            last_eval = self.evaluate()
            self.metrics.log(0, last_eval, self.total_steps)
        while self.step < self.total_steps:
            metrics = self.train_step()
            self.step += 1
            if run.eval_every and (self.step % run.eval_every == 0 or self.step == self.total_steps):
                last_eval = self.evaluate()
                metrics.update(last_eval)
            self.metrics.log(self.step, metrics, self.total_steps)
            stop = self.stop_requested() and self.step < self.total_steps
            if stop or run.save_every and self.step % run.save_every == 0 and self.step < self.total_steps:
                saved = self.save()
            if run.export_every and self.step % run.export_every == 0 and self.step < self.total_steps:
                self.export()  # the last step's export follows the loop
            if stop:
                if self.world.is_main:
                    print(f"stopped by {self.signals.received or 'a signal to another rank'} after step "
                          f"{self.step}: checkpoint saved to {saved}; run the same command to resume", flush=True)
                self.metrics.close()
                return last_eval
        self.save()
        self.export()
        self.metrics.close()
        return last_eval

    def train_step(self) -> dict[str, float]:
        config, timer, started = self.config, PhaseTimer(), time.perf_counter()
        samples = step_prompts(self.questions, self.step, config.data.prompts_per_step, seed=config.data.seed,
                               rank=self.world.rank, world_size=self.world.size)
        if config.spark.schedule == "mixed":  # earlier steps' recycled prompts join this step's batch
            samples += self.take_recycled()
        experiences = self.rollout(samples, Salt.ROLLOUT, timer)
        trained = [e for e in experiences if e.sample.task != "policy" or self.ablation.trains_policy]
        sampling: dict[str, float] = {}
        if config.rollout.dynamic_sampling and self.ablation.trains_policy:
            experiences, trained, sampling = self.dynamic_sampling(experiences, trained, timer)
        first, slots = self.step * self.policy_optimizer_steps, self.policy_optimizer_steps
        metrics = {**self.update(trained, timer, lr_steps=(first, slots)), **sampling}
        metrics.update(self.alarms.check(self.step + 1, metrics, show=self.world.is_main))

        if self.recycle_rules is not None:
            rng = random.Random(self.seed(Salt.RECYCLE))
            recycled, stats = recycle(rollout_groups(experiences), self.recycle_rules, rng,
                                     answer_mode=self.config.reward.answer_mode,
                                     rule_tasks=rule_tasks(config.spark.mode))
            self.queue.push(recycled)
            metrics.update(label_balance(reduce_metrics(label_counts(stats))))
            if config.spark.schedule == "separate":
                recycled_experiences = self.rollout(self.take_recycled(), Salt.RECYCLED_ROLLOUT, timer)
                recycled_metrics = self.update(recycled_experiences, timer, lr_steps=(first + slots - 1, 1),
                                               salt=Salt.RECYCLED_MINI_BATCHES)
                metrics.update({f"recycled/{k}": v for k, v in recycled_metrics.items()})
                experiences += recycled_experiences
                trained += recycled_experiences
            metrics["recycle/waiting"] = reduce_metrics({"waiting": len(self.queue)})["waiting"]

        metrics.update(rollout_metrics(experiences))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["skipped_steps"] = self.skipped_steps
        metrics.update(timer.seconds)
        metrics["time/step"] = time.perf_counter() - started
        metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["time/step"]
        metrics.update(experience_flop_metrics(self.flop_model, trained, experiences, metrics, self.config,
                                               reference=self.reference is not None, gpus=self.world.size,
                                               peak=self.peak_tflops))
        if config.run.sample_every and self.step % config.run.sample_every == 0:  # the first step, then every K
            self.metrics.log_samples(self.step + 1, first_of_each_task(experiences))  # numbered as metrics.jsonl
        return metrics

    def take_recycled(self) -> list[Sample]:
        """Collective. This rank's share of the recycled prompts to train now: every waiting one
        (`spark.recycled_batch` = 0), or as many full batches of `recycled_batch` prompts (over all ranks) as
        wait, the oldest first, dealt evenly over the ranks; the rest wait for a later step."""
        batch = self.config.spark.recycled_batch
        if not batch:
            return self.queue.pop(len(self.queue))
        waiting = all_gather_objects(len(self.queue))
        return self.queue.pop(deal(waiting, sum(waiting) // batch * batch)[self.world.rank])

    def seed(self, salt: Salt) -> int:
        return step_seed(self.config.data.seed, self.step, self.world.rank, salt)

    def stop_requested(self) -> bool:
        """Whether any rank was signalled to stop: every rank stops after the same step."""
        return reduce_metrics({"stop": self.signals.requested}, op="max")["stop"] > 0

    def check_prompts(self) -> None:
        """Before step 1: every training prompt renders (its image too) within data.max_prompt_tokens; each rank
        checks every world_size-th row, and the error lists every bad one."""
        errors = all_gather_objects(self.rollouts.prompt_errors(self.questions[self.world.rank::self.world.size]))
        DataErrors.raise_any([error for rank in errors for error in rank])

    # ---- rollout, reward, advantages ----------------------------------------------------------------

    def rollout(self, samples: list[Sample], salt: int, timer: PhaseTimer, first_group: int = 0) -> list[Experience]:
        """n scored responses per sample from the current policy, with their advantages. A sample's group id is
        first_group + its position in the global batch (ranks deal the batch out every world_size-th sample), so
        that the update's mini-batches are the same on any number of ranks."""
        rollout, reward = self.config.rollout, self.config.reward
        with timer("rollout"):
            self.copy_policy_to_sampler()
            group_ids = [first_group + self.world.rank + i * self.world.size for i in range(len(samples))]
            experiences = self.rollouts.sample(samples, rollout, rollout.n, self.seed(salt), group_ids)
        with timer("reward"):
            score(experiences, reward.answer_mode)
        for e in experiences:
            e.shaping = overlong_penalty(len(e.response_ids), rollout.max_new_tokens, reward.overlong_buffer,
                                         reward.overlong_penalty)
        self.assign_advantages(experiences)
        return experiences

    def dynamic_sampling(self, experiences: list[Experience], trained: list[Experience], timer: PhaseTimer
                         ) -> tuple[list[Experience], list[Experience], dict[str, float]]:
        """Collective. DAPO's dynamic sampling (Yu et al. 2025): the policy groups whose rewards are all equal are
        dropped from the trained batch, and rounds of data.prompts_per_step more prompts are sampled until
        prompts_per_step policy groups are left (the first ones by round and group id), or
        rollout.max_sampling_rounds rounds are done (the batch then trains with what there is). Returns (every
        sampled experience, for recycling and the rollout metrics; the trained ones; the metrics
        `dropped_groups` and `sampling_rounds`). A round's prompts are a pure function of (seed, step, round): a
        random draw without repeats, so that a resumed run samples the same."""
        per_step, world = self.config.data.prompts_per_step, self.world
        sampled, fresh, kept, dropped, rounds = list(experiences), trained, [], 0, 1
        while True:
            for group in by_group(fresh):
                if group[0].sample.task != "policy" or varied(group):
                    kept += group
                else:
                    dropped += 1
            mine = sorted({e.group for e in kept if e.sample.task == "policy"})
            if reduce_metrics({"kept": len(mine)})["kept"] >= per_step or rounds == self.config.rollout.max_sampling_rounds:
                break
            salt = Salt.SAMPLING_ROUND + rounds
            prompts = step_prompts(self.questions, 0, per_step, rank=world.rank, world_size=world.size,
                                   seed=step_seed(self.config.data.seed, self.step, 0, salt))
            after = reduce_metrics({"next": max((e.group for e in sampled), default=-1) + 1}, op="max")["next"]
            fresh = self.rollout(prompts, salt, timer, first_group=int(after))
            sampled += fresh
            rounds += 1
        chosen = set(sorted(g for rank in all_gather_objects(mine) for g in rank)[:per_step])
        kept = [e for e in kept if e.sample.task != "policy" or e.group in chosen]
        self.assign_advantages(kept)  # over the trained batch (scale = "batch" reads its statistics)
        return sampled, kept, {"dropped_groups": reduce_metrics({"dropped": dropped})["dropped"],
                               "sampling_rounds": rounds}

    def assign_advantages(self, experiences: list[Experience]) -> None:
        """Group-normalised advantages of the rewards plus their shaping; the statistics of scale="batch" span all
        ranks, so the result does not depend on how the batch is split."""
        groups = by_group(experiences)
        everyone = all_gather_objects([[e.reward + e.shaping for e in group] for group in groups])
        offset = sum(len(rank) for rank in everyone[:self.world.rank])
        rewards = torch.tensor([group for rank in everyone for group in rank], dtype=torch.float64)
        if not len(rewards):
            return
        loss = self.config.loss
        advantages = group_advantages(rewards, loss.advantage_eps, loss.advantage_scale, loss.advantage_std)[offset:]
        for group, group_advantage in zip(groups, advantages.tolist()):
            for experience, advantage in zip(group, group_advantage):
                experience.advantage = advantage

    # ---- update -------------------------------------------------------------------------------------

    def micro_batches(self, experiences: list[Experience]) -> list[tuple[list[Experience], MicroBatch]]:
        """Micro-batches of at most `micro_batch_tokens` tokens, each with its experiences in row order; every
        rank gets the same number (FSDP's collectives must match), padded with empty ones."""
        batches = split_by_tokens(experiences, self.config.loss.micro_batch_tokens)
        count = int(reduce_metrics({"count": len(batches)}, op="max")["count"])
        batches += [[] for _ in range(count - len(batches))]
        return [(batch, pack(batch, no_loss=self.no_loss_sequence, task_weights=self.config.spark.task_weights,
                             drop_truncated=self.config.loss.mask_truncated, device=self.world.device))
                for batch in batches]

    def response_logprobs(self, model, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of the response tokens, [S, R] (0 where the mask is)."""
        scored = batch.mask > 0
        logp, entropy = model.logprobs(batch.input_ids, batch.targets[scored], packing=batch.packing,
                                       scored=batch.response_index[scored],
                                       temperature=self.config.rollout.temperature or 1.0,
                                       chunk_size=self.config.loss.logprob_chunk, **batch.images)
        return batch.mask.masked_scatter(scored, logp), batch.mask.masked_scatter(scored, entropy)

    @torch.no_grad()
    def store_logprobs(self, model, experiences: list[Experience], name: str) -> None:
        """Collective. Set each experience's `name` ("old_logprobs" / "ref_logprobs") to `model`'s log-probs of
        its response tokens, in micro-batches over the whole batch."""
        for chunk, batch in self.micro_batches(experiences):
            logp = self.response_logprobs(model, batch)[0]
            for row, experience in enumerate(chunk):
                setattr(experience, name, logp[row, :len(experience.response_ids)])
        # FSDP keeps the root's parameters (embeddings, head, vision root) gathered after a forward, expecting a
        # backward; there is none here, so shard them again.
        model.reshard()

    def optimizer_steps_per_update(self, rollouts: int) -> int:
        """Optimizer steps of an update on `rollouts` rollouts (over all ranks): one per mini-batch per pass."""
        size = self.config.loss.mini_batch_size or rollouts
        return self.config.loss.ppo_epochs * max(1, math.ceil(rollouts / size))

    def update(self, experiences: list[Experience], timer: PhaseTimer | None = None,
               lr_steps: tuple[int, int] | None = None, salt: Salt = Salt.MINI_BATCHES) -> dict[str, float]:
        """`update_steps`, with what model.offload frees during an update freed (`PhaseMemory`)."""
        self.memory.update_begins()
        try:
            return self.update_steps(experiences, timer, lr_steps, salt)
        finally:
            self.memory.update_ends()

    def update_steps(self, experiences: list[Experience], timer: PhaseTimer | None = None,
                     lr_steps: tuple[int, int] | None = None, salt: Salt = Salt.MINI_BATCHES) -> dict[str, float]:
        """Optimizer steps on `experiences` (this rank's share of the batch), one per mini-batch of
        `loss.mini_batch_size` rollouts (counted over all ranks) per pass (`loss.ppo_epochs`); returns metrics
        over all ranks. pi_old and the reference's log-probs are computed once, before the first step.

        lr_steps = (first, slots): the update's optimizer steps take the learning rates of schedule steps
        first .. first + slots - 1, spread evenly; None leaves the learning rate as it is."""
        timer = timer or PhaseTimer()
        cfg = self.config.loss
        keys = experience_keys(experiences)
        everyone = [key for rank in all_gather_objects(keys) for key in rank]
        if len(set(everyone)) < len(everyone):
            raise ValueError("update: two experiences share a (group id, response) key; group ids must be unique "
                             "over all ranks (Trainer.rollout numbers them by position in the global batch)")
        # The same order on every rank: the seed does not depend on the rank.
        seed = step_seed(self.config.data.seed, self.step, 0, salt)
        plan = mini_batches(everyone, cfg.mini_batch_size, cfg.ppo_epochs, seed,
                            keep_groups=cfg.mini_batch_order == "groups")
        if not plan:
            return {}
        with timer("reference"):
            if self.reference is not None:
                self.store_logprobs(self.reference, experiences, "ref_logprobs")
            # With a single optimizer step the policy has not moved when its loss is computed: pi_old is the
            # current policy, and its log-probs are those of the update's own forward (detached).
            if len(plan) > 1:
                self.store_logprobs(self.policy, experiences, "old_logprobs")
        sums: dict[str, torch.Tensor] = {}  # token sums, on the device until the one reduction at the end
        losses, grad_norms, steps, tokens = [], [], 0, 0.0
        with timer("update"):
            for index, mini_batch in enumerate(plan):
                if lr_steps is not None:
                    first, slots = lr_steps
                    self.set_lr(first + index * slots // len(plan))
                chosen = set(mini_batch)
                result = self.optimizer_step([e for key, e in zip(keys, experiences) if key in chosen],
                                             single=len(plan) == 1)
                if result is None:  # no token carries a loss (every response masked)
                    continue
                loss, grad_norm, step_sums, step_tokens = result
                sums = {k: sums.get(k, 0) + v for k, v in step_sums.items()}
                losses.append(loss)
                grad_norms.append(grad_norm)
                steps += math.isfinite(loss) and math.isfinite(grad_norm)
                tokens += step_tokens
        if not losses:
            return {}
        totals = reduce_metrics(sums)
        per_token = {k: v / tokens for k, v in totals.items()}
        return {**per_token, "loss": sum(losses) / len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                "grad_norm": sum(grad_norms) / len(grad_norms), "optimizer_steps": steps,
                "tokens": tokens / cfg.ppo_epochs}

    def optimizer_step(self, experiences: list[Experience], single: bool) -> tuple[float, float, dict, float] | None:
        """Collective. One optimizer step on this rank's share of one mini-batch: its micro-batches'
        gradients accumulated, clipped, AdamW stepped (skipped when the loss or the gradient norm is not
        finite). Returns the mini-batch's loss, gradient norm, token sums and global token count; None when
        no token of the mini-batch carries a loss."""
        cfg = self.config.loss
        batches = self.micro_batches(experiences)
        counts = reduce_metrics({"tokens": sum(b.mask.sum() for _, b in batches),
                                 "seqs": sum(b.mask.any(-1).sum() for _, b in batches)})
        if counts["seqs"] == 0:
            return None
        sums: dict[str, torch.Tensor] = {}
        for _, batch in batches:
            logp, entropy = self.response_logprobs(self.policy, batch)
            loss, loss_sums = micro_batch_loss(
                logp, logp.detach() if single else batch.old_logprobs,
                batch.ref_logprobs if self.reference is not None else None, batch.advantages, batch.weights,
                batch.mask, cfg, sampler_logp=batch.sampler_logprobs, num_tokens=counts["tokens"],
                num_seqs=counts["seqs"], max_tokens=self.config.rollout.max_new_tokens)
            # FSDP averages gradients over ranks; the loss is already normalised by global counts.
            (loss * self.world.size).backward()
            mismatch = (logp.detach() - batch.sampler_logprobs).abs() * batch.mask
            step_sums = {"loss": loss.detach(), "entropy": (entropy * batch.mask).sum(),
                         "logp_mismatch": mismatch.sum(), **loss_sums}
            sums = {k: sums.get(k, 0) + v for k, v in step_sums.items()}
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.policy.parameters() if p.requires_grad], self.config.optim.grad_clip)
        # Both are global (the loss summed over ranks, the norm of the whole gradient), so every rank takes
        # the same branch.
        loss = float(reduce_metrics({"loss": sums.pop("loss", 0.0)})["loss"])
        grad_norm = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.skipped_in_a_row = 0
        else:
            self.skip_update(loss, grad_norm, experiences)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, sums, float(counts["tokens"])

    def set_lr(self, schedule_step: int) -> None:
        """The learning rate of optimizer step `schedule_step` of the run (`cosine_lr` over its planned
        optimizer steps)."""
        optim = self.config.optim
        scale = cosine_lr(schedule_step, self.schedule_steps, max(1, int(optim.warmup_ratio * self.schedule_steps)),
                          optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = optim.lr * scale

    def skip_update(self, loss: float, grad_norm: float, experiences: list[Experience]) -> None:
        """Collective. An update with a non-finite loss or gradient norm leaves the weights and optimizer state
        as they are; it is logged with the tasks of its batch, and one too many in a row stops the run."""
        present = reduce_metrics({task: any(e.sample.task == task for e in experiences) for task in TASKS}, op="max")
        tasks = ", ".join(task for task in TASKS if present[task])
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        limit = self.config.run.max_skipped_steps
        if self.world.is_main:
            print(f"step {self.step + 1}: loss {loss}, grad_norm {grad_norm} in the update of the {tasks} batch: "
                  f"optimizer step skipped ({self.skipped_in_a_row} in a row, run.max_skipped_steps={limit})",
                  flush=True)
        if self.skipped_in_a_row > limit:
            latest = self.checkpointer.latest()
            kept = (f"the last checkpoint, {latest}, is intact: the same command with a lower optim.lr resumes "
                    f"from it" if latest else "no checkpoint was saved yet")
            raise NonFiniteError(
                f"step {self.step + 1}: {self.skipped_in_a_row} updates in a row had a non-finite loss or gradient "
                f"norm (run.max_skipped_steps={limit}); the weights were left as they were, and {kept}")

    # ---- held-out evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.copy_policy_to_sampler()
        greedy = dataclasses.replace(self.config.rollout, temperature=0.0,
                                     max_new_tokens=self.config.run.eval_max_new_tokens)
        return heldout_metrics(self.rollouts, self.eval_sets, greedy, self.config.reward.answer_mode,
                               rank=self.world.rank, world_size=self.world.size)

    # ---- checkpoints --------------------------------------------------------------------------------

    def save(self) -> Path:
        queues = all_gather_objects(self.queue.state_dict())
        state = {"step": self.step, "run": run_identity(self.config), "queues": queues,
                 "skipped_steps": self.skipped_steps, "skipped_in_a_row": self.skipped_in_a_row}
        with self.memory.optimizer_on_device():
            return self.checkpointer.save(self.step, self.policy, self.optimizer, state, config_hash(self.config))

    def resume(self) -> None:
        if self.world.is_main:
            self.checkpointer.remove_stale()
        dist.barrier()
        latest = self.resume_from
        if latest is None:
            return
        state = self.checkpointer.trainer_state(latest)
        self.checkpointer.load(latest, self.policy, self.optimizer)
        self.step = state["step"]
        self.skipped_steps, self.skipped_in_a_row = state.get("skipped_steps", 0), state.get("skipped_in_a_row", 0)
        # The recycle queue is re-dealt over however many ranks there are now.
        samples = [sample for queue in state["queues"] for sample in queue["samples"]]
        self.queue.load_state_dict({"samples": samples[self.world.rank::self.world.size]})
        if self.world.is_main:
            print(f"resumed from {latest} at step {self.step}", flush=True)

    def export(self) -> None:
        """The policy as a Hugging Face directory (config, weights, tokenizer, chat template)."""
        self.memory.sampler_needed()
        export_model(self.policy, self.rollouts.chat.model, self.out_dir / "export")


def shared_prompts(experiences: list) -> list[tuple[int, list[int]]]:
    """(prompt length, response lengths) of each prompt the update packs once for its responses: the experiences
    (spark.rl.rollout.Experience) grouped as spark.rl.packing groups them (a group split over micro-batches, which
    packs its prompt again, is counted once)."""
    return [(len(group[0].prompt_ids), [len(e.response_ids) for e in group])
            for group in group_by_prompt(experiences).values()]


def experience_flop_metrics(model: FlopModel, trained: list, sampled: list, seconds: dict[str, float], config, *,
                            reference: bool, gpus: int, peak: float | None) -> dict[str, float]:
    """A training step's model FLOPs per token, TFLOP/s and MFU by phase, over all ranks: `trained` and
    `sampled` are its spark.rl.rollout.Experiences, `seconds` its phase times (time/rollout, ...), `config` its
    TrainConfig. Also `trained_tokens`, the prompt and response tokens of the trained sequences (a shared
    prompt counted once per response). A collective (one reduction); the functions above are the arithmetic."""
    def lengths(experiences):
        return [len(e.prompt_ids) + len(e.response_ids) for e in experiences]

    def patches(experiences):
        return [int(t * h * w) for e in experiences
                for t, h, w in e.images.get("image_grid_thw", torch.zeros(0, 3)).tolist()]

    local = step_flops(model, updated=shared_prompts(trained), generated=shared_prompts(sampled),
                       reference=reference, ppo_epochs=config.loss.ppo_epochs, updated_patches=patches(trained),
                       generated_patches=patches(sampled), vision_trained=not config.model.freeze_vision)
    totals = reduce_metrics({**local, "trained_tokens": sum(lengths(trained)), "sampled_tokens": sum(lengths(sampled))})
    return {**flop_metrics(totals, seconds, gpus, peak), "trained_tokens": totals["trained_tokens"]}
