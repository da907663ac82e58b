"""The SPARK training loop: GRPO on verifiable prompts, with the same rollouts recycled into judge and
reflection prompts for the same model.

One step (every rank runs it on its own share of the prompts):
  1. rollout   the policy's full weights are copied into a plain (unsharded) model that samples n
               responses per prompt with our KV-cached sampler;
  2. reward    the rule verifier scores each response (math answers, Yes/No and A/B verdicts);
  3. update    group-normalised advantages, then the clipped surrogate + kl_coef * KL to the frozen
               reference over packed micro-batches, AdamW, grad clipping;
  4. recycle   the policy groups become pointwise / pairwise / reflection prompts, trained with the same
               rollout + reward + update machinery right away (`schedule = "separate"`, the reference
               behaviour) or mixed into the next step's batch (`schedule = "mixed"`).
Every random draw derives from (seed, step, rank), so a resumed run continues exactly where the
uninterrupted one would have been, and the data cursor is a pure function of the step.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from spark.chat import ChatPrompt, image_inputs, load_chat_model
from spark.checkpointing import Checkpointer
from spark.config import DataSettings, TrainConfig
from spark.data import TASKS, DataError, Sample, load_questions, read_records, require_str
from spark.distributed import all_gather_objects, all_reduce, init_distributed, shard_model
from spark.images import ImageConfig
from spark.losses import aggregate, group_advantages, kl_penalty, policy_loss
from spark.metrics import MetricsLogger
from spark.models import Packing, load_model, save_model
from spark.prompts import math_prompt, pointwise_prompt
from spark.recycle import (
    VERIFIER_KIND,
    RecycleConfig,
    RecycleQueue,
    RolloutGroup,
    recycle,
    recycle_config_for,
)
from spark.sampler import SamplingParams, generate
from spark.verifier import parse_judgment, score_batch


@dataclass
class Experience:
    """One sampled response to one prompt, with what the update needs."""

    sample: Sample
    prompt_ids: list[int]
    response_ids: list[int]
    response: str
    reward: float
    truncated: bool
    advantage: float = 0.0
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # the prompt's image inputs (ChatPrompt.images)


@dataclass
class MicroBatch:
    """Packed sequences (prompt + response) and where their response tokens sit.

    input_ids/targets: [1, N] (targets are input_ids shifted by one); response_index [S, R] indexes the
    flat [N] stream at the positions that predict each response token; mask [S, R] is 1 on real ones.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    packing: Packing
    response_index: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor  # [S, 1]
    weights: torch.Tensor  # [S, 1] task weight of each sequence
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw in stream order


def cosine_lr(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warm-up to 1 over `warmup_steps`, then cosine to `min_ratio`.

    warmup:  (step + 1) / warmup_steps
    decay:   min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress)), progress in [0, 1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def recycled_kinds(mode: str, rules: RecycleConfig) -> RecycleConfig | None:
    """The recycling rules with only the kinds that both the ablation `mode` and the rules switch on;
    None when nothing is recycled (policy-only)."""
    preset = recycle_config_for(mode)
    kinds = {kind: getattr(preset, kind) and getattr(rules, kind) for kind in ("pointwise", "pairwise", "reflection")}
    return dataclasses.replace(rules, **kinds) if any(kinds.values()) else None


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """One 63-bit seed per (run seed, step, rank, purpose)."""
    return random.Random(f"{seed}:{step}:{rank}:{salt}").getrandbits(63)


def task_image_configs(checkpoint: ImageConfig | None, data: DataSettings) -> dict[str, ImageConfig | None]:
    """Each task's image preprocessing: the checkpoint's, with data.min_pixels / max_pixels for policy prompts
    and data.judge_max_pixels for the recycled (judge and reflection) ones; a setting of 0 changes nothing."""
    if checkpoint is None:
        return dict.fromkeys(TASKS)
    bounds = {"min_pixels": data.min_pixels, "max_pixels": data.max_pixels}
    policy = dataclasses.replace(checkpoint, **{k: v for k, v in bounds.items() if v})
    recycled = dataclasses.replace(policy, max_pixels=data.judge_max_pixels or policy.max_pixels)
    return {task: policy if task == "policy" else recycled for task in TASKS}


def filler_sequence(model: torch.nn.Module) -> tuple[int, dict[str, torch.Tensor]]:
    """A one-token sequence with no loss, for micro-batches that would otherwise skip part of the model:
    token 0 for a text model; for a VL model an `<|image_pad|>` and a blank image of one merge unit, so
    that every rank runs the vision tower in every micro-batch (FSDP's collectives must match)."""
    visual = getattr(model, "visual", None)
    if visual is None:
        return 0, {}
    cfg, merge = visual.config, visual.config.spatial_merge_size
    blank = torch.zeros(merge**2, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2)
    return model.image_token_id, {"pixel_values": blank, "image_grid_thw": torch.tensor([[1, merge, merge]])}


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.world = init_distributed()
        self.out_dir = Path(config.run.out_dir)
        self.recycle_config = recycled_kinds(config.spark.mode, config.spark.recycle)
        device = self.world.device
        mixed = config.model.mixed_precision and device.type == "cuda"
        sample_dtype = torch.bfloat16 if mixed else torch.float32

        self.policy = load_model(config.model.path, device=device)
        self.policy.model.activation_checkpointing = config.model.activation_checkpointing
        if config.model.freeze_vision:
            self.policy.freeze_vision()
        self.policy.train()
        shard_model(self.policy, mixed_precision=mixed, methods=("logprobs",))
        self.reference = None
        if config.loss.kl_coef > 0:
            self.reference = load_model(config.model.path, device=device).requires_grad_(False)
            shard_model(self.reference, mixed_precision=mixed, methods=("logprobs",))
        # The sampler runs on a plain full copy, refreshed from the shards before every rollout.
        self.chat = load_chat_model(config.model.path, device=device, dtype=sample_dtype)
        self.sampler = self.chat.model
        self.image_configs = task_image_configs(self.chat.image_config, config.data)
        self.filler_token, self.filler_images = filler_sequence(self.sampler)

        params = [p for p in self.policy.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay)
        self.questions = load_questions(
            config.data.train_files, question_field=config.data.question_field,
            answer_field=config.data.answer_field, image_field=config.data.image_field, prompt=math_prompt)
        per_step = config.data.prompts_per_step
        if per_step % self.world.size:
            raise ValueError(f"data.prompts_per_step={per_step} must be divisible by the {self.world.size} ranks")
        steps = config.data.epochs * len(self.questions) // per_step
        self.total_steps = min(steps, config.run.max_steps) if config.run.max_steps else steps
        if self.total_steps < 1:
            raise ValueError(f"{len(self.questions)} training rows give no step of {per_step} prompts")
        self.queue = RecycleQueue()
        self.step = 0
        self.timings: dict[str, float] = defaultdict(float)  # seconds per phase, reset every step
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints", config.run.keep_last)
        self.metrics = MetricsLogger(self.out_dir, enabled=self.world.is_main)
        self.eval_sets = self.load_eval_sets()
        self.resume()

    # ---- data ---------------------------------------------------------------------------------------

    def prompts_for_step(self, step: int) -> list[Sample]:
        """This rank's share of the step's prompts: positions [step * P, (step + 1) * P) of the
        concatenated per-epoch permutations, every world_size-th from this rank's offset."""
        per_step, n = self.config.data.prompts_per_step, len(self.questions)
        orders: dict[int, list[int]] = {}  # epoch -> its permutation, drawn once per call
        picked = []
        for position in range(step * per_step + self.world.rank, (step + 1) * per_step, self.world.size):
            epoch, index = divmod(position, n)
            if epoch not in orders:
                generator = torch.Generator().manual_seed(self.config.data.seed + epoch)
                orders[epoch] = torch.randperm(n, generator=generator).tolist()
            picked.append(self.questions[orders[epoch][index]])
        return picked

    def load_eval_sets(self) -> dict[str, list[Sample]]:
        """Held-out policy rows {question, answer} and pointwise judge rows {question, answer, label, cot?}
        (`answer` is the candidate shown to the judge: a final answer, or a whole response with cot=true)."""
        run = self.config.run
        sets = {"policy": load_questions(run.eval_files, prompt=math_prompt) if run.eval_files else []}
        judge = []
        for path in run.judge_eval_files:
            for line, row in read_records(path):
                label = require_str(row, "label", path, line)
                if label not in ("Yes", "No"):
                    raise DataError(path, line, "label", f"must be Yes or No, got {label!r}")
                question, answer = require_str(row, "question", path, line), require_str(row, "answer", path, line)
                shown = pointwise_prompt(question, answer, cot=bool(row.get("cot", False)))
                judge.append(Sample(shown, label, task="pointwise", meta={"source": f"{path}:{line}"}))
        sets["pointwise"] = judge
        return sets

    # ---- rollout and reward -------------------------------------------------------------------------

    @torch.no_grad()
    def refresh_sampler(self) -> None:
        """Copy the policy's current weights into the sampling model, gathering one tensor at a time so a
        full fp32 copy of the model never exists on top of the sampler's."""
        sampler_state = self.sampler.state_dict()
        for name, shard in self.policy.state_dict().items():
            sampler_state[name].copy_(shard.full_tensor() if isinstance(shard, DTensor) else shard)

    def render(self, samples: list[Sample]) -> list[ChatPrompt]:
        """Chat-templated prompts with their image inputs, each image at its task's resolution."""
        return [self.chat.render([s.prompt], [s.image], image_config=self.image_configs[s.task])[0] for s in samples]

    def rollout(self, samples: list[Sample], n: int, *, greedy: bool = False, salt: int = 0) -> list[Experience]:
        """n responses per sample from the sampling model, scored by the verifier."""
        if not samples:
            return []
        settings = self.config.rollout
        prompts = self.render(samples)
        for sample, prompt in zip(samples, prompts):
            if len(prompt.ids) > self.config.data.max_prompt_tokens:
                raise DataError(sample.meta.get("source", "<recycled>"), None, "question",
                                f"prompt is {len(prompt.ids)} tokens, over data.max_prompt_tokens")
        params = SamplingParams(
            max_new_tokens=settings.max_new_tokens if not greedy else self.config.run.eval_max_new_tokens,
            temperature=0.0 if greedy else settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
            stop_token_ids=self.chat.stop_token_ids, banned_token_ids=self.chat.banned_token_ids,
            compile=settings.compile)
        jobs = [(sample, prompt) for sample, prompt in zip(samples, prompts) for _ in range(n)]
        experiences = []
        started = time.time()
        for start in range(0, len(jobs), settings.batch_size):
            chunk = jobs[start:start + settings.batch_size]
            out = generate(self.sampler, [prompt.ids for _, prompt in chunk], params,
                           seed=step_seed(self.config.data.seed, self.step, self.world.rank, salt + start),
                           **image_inputs((prompt.images for _, prompt in chunk), self.world.device))
            texts = self.chat.tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
            for (sample, prompt), tokens, text, reason in zip(chunk, out.tokens, texts, out.finish_reasons):
                experiences.append(Experience(sample, prompt.ids, tokens, text, 0.0, reason == "length",
                                              images=prompt.images))
        self.timings["time/rollout"] += time.time() - started
        started = time.time()
        rewards = score_batch([e.response for e in experiences], [e.sample.gold for e in experiences],
                              kinds=[VERIFIER_KIND[e.sample.task] for e in experiences])
        for experience, reward in zip(experiences, rewards):
            experience.reward = reward
        self.timings["time/reward"] += time.time() - started
        return experiences

    def assign_advantages(self, experiences: list[Experience], n: int) -> None:
        """Group advantages over groups of n consecutive experiences; the statistics of scale="batch" span
        all ranks, so the result does not depend on how the batch is split."""
        local = [e.reward for e in experiences]
        everyone = all_gather_objects(local)
        offset = sum(len(r) for r in everyone[:self.world.rank])
        rewards = torch.tensor([r for rank in everyone for r in rank], dtype=torch.float64).view(-1, n)
        advantages = group_advantages(rewards, self.config.loss.advantage_eps, self.config.loss.advantage_scale)
        for experience, advantage in zip(experiences, advantages.flatten()[offset:offset + len(local)].tolist()):
            experience.advantage = advantage

    # ---- update -------------------------------------------------------------------------------------

    def micro_batches(self, experiences: list[Experience]) -> list[MicroBatch]:
        """Pack experiences into micro-batches of at most `micro_batch_tokens` tokens; every rank gets the
        same number (the FSDP collectives must match), padded with empty ones."""
        budget = self.config.loss.micro_batch_tokens
        groups: list[list[Experience]] = []
        used = 0  # tokens in groups[-1]
        for experience in sorted(experiences, key=lambda e: -len(e.prompt_ids) - len(e.response_ids)):
            length = len(experience.prompt_ids) + len(experience.response_ids) - 1
            if not groups or used + length > budget:
                groups.append([])
                used = 0
            groups[-1].append(experience)
            used += length
        count = int(all_reduce([len(groups)], op="max")[0])
        groups += [[] for _ in range(count - len(groups))]
        return [self.pack(group) for group in groups]

    def pack(self, experiences: list[Experience]) -> MicroBatch:
        device = self.world.device
        if not experiences:  # an empty micro-batch: the filler sequence alone
            zero = torch.zeros(1, 1, device=device)
            stream = torch.tensor([[self.filler_token]], device=device)
            return MicroBatch(stream, torch.zeros_like(stream), Packing.from_lengths([1], device), zero.long(), zero,
                              zero, zero, image_inputs([self.filler_images], device))
        streams, targets, index, lengths = [], [], [], []
        offset = 0
        for e in experiences:
            tokens = e.prompt_ids + e.response_ids
            streams += tokens[:-1]
            targets += tokens[1:]
            lengths.append(len(tokens) - 1)
            first = offset + len(e.prompt_ids) - 1  # the position that predicts the first response token
            index.append(list(range(first, first + len(e.response_ids))))
            offset += len(tokens) - 1
        images = [e.images for e in experiences]
        if self.filler_images and not any(images):
            streams.append(self.filler_token)
            targets.append(0)
            lengths.append(1)
            images = [self.filler_images]
        width = max(map(len, index))
        response_index = torch.tensor([i + [0] * (width - len(i)) for i in index], device=device)
        mask = torch.tensor([[1.0] * len(i) + [0.0] * (width - len(i)) for i in index], device=device)
        if self.config.loss.mask_truncated:
            mask *= torch.tensor([[0.0 if e.truncated else 1.0] for e in experiences], device=device)
        weights = self.config.spark.task_weights
        return MicroBatch(
            torch.tensor([streams], device=device), torch.tensor([targets], device=device),
            Packing.from_lengths(lengths, device), response_index, mask,
            torch.tensor([[e.advantage] for e in experiences], device=device),
            torch.tensor([[weights[e.sample.task]] for e in experiences], device=device), image_inputs(images, device))

    def response_logprobs(self, model, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of the response tokens, [S, R]."""
        logp, entropy = model.logprobs(batch.input_ids, batch.targets, packing=batch.packing,
                                       temperature=self.config.rollout.temperature or 1.0,
                                       chunk_size=self.config.loss.logprob_chunk, **batch.images)
        return logp[batch.response_index], entropy[batch.response_index]

    def update(self, experiences: list[Experience]) -> dict[str, float]:
        """One optimizer step on `experiences` (this rank's share); returns global metrics."""
        loss_cfg = self.config.loss
        batches = self.micro_batches(experiences)
        num_tokens, num_seqs = all_reduce([sum(float(b.mask.sum()) for b in batches),
                                           sum(float(b.mask.any(-1).sum()) for b in batches)])
        if num_seqs == 0:
            return {}
        started = time.time()
        ref_logps = [None] * len(batches)
        old_logps = [None] * len(batches)
        with torch.no_grad():
            if self.reference is not None:
                ref_logps = [self.response_logprobs(self.reference, b)[0] for b in batches]
            if loss_cfg.ppo_epochs > 1:
                old_logps = [self.response_logprobs(self.policy, b)[0] for b in batches]
        self.timings["time/reference"] += time.time() - started

        started = time.time()
        sums = defaultdict(float)  # token-summed metrics, normalised by num_tokens below
        for _ in range(loss_cfg.ppo_epochs):
            for batch, ref_logp, old_logp in zip(batches, ref_logps, old_logps):
                logp, entropy = self.response_logprobs(self.policy, batch)
                # With one pass, the policy has not moved since sampling: pi_old is the current policy.
                old = old_logp if old_logp is not None else logp.detach()
                pg_loss, info = policy_loss(logp, old, batch.advantages, clip_low=loss_cfg.clip_low,
                                            clip_high=loss_cfg.clip_high, dual_clip=loss_cfg.dual_clip or None)
                per_token = pg_loss
                if ref_logp is not None:
                    kl = kl_penalty(logp, ref_logp, loss_cfg.kl_kind)
                    per_token = per_token + loss_cfg.kl_coef * kl
                    sums["kl"] += float((kl.detach() * batch.mask).sum())
                loss = aggregate(per_token * batch.weights, batch.mask, loss_cfg.aggregation,
                                 num_tokens=num_tokens, num_seqs=num_seqs)
                # FSDP averages gradients over ranks; the loss is already normalised by global counts.
                (loss * self.world.size).backward()
                sums["loss"] += loss.item() / loss_cfg.ppo_epochs
                sums["entropy"] += float((entropy * batch.mask).sum())
                sums["clip_frac"] += float((info["clipped"] * batch.mask).sum())
                sums["approx_kl"] += float((info["approx_kl"] * batch.mask).sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.policy.parameters() if p.requires_grad], self.config.optim.grad_clip)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.timings["time/update"] += time.time() - started
        keys = sorted(sums)
        totals = dict(zip(keys, all_reduce([sums[k] for k in keys])))
        denominator = num_tokens * loss_cfg.ppo_epochs
        metrics = {k: totals[k] / denominator for k in keys if k != "loss"}
        return {**metrics, "loss": totals["loss"], "grad_norm": float(grad_norm), "tokens": num_tokens}

    # ---- the loop -----------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        config, n = self.config, self.config.rollout.n
        started = time.time()
        self.timings = defaultdict(float)
        metrics: dict[str, float] = {}
        samples = self.prompts_for_step(self.step)
        if config.spark.schedule == "mixed":
            samples += self.queue.pop(len(self.queue))
        self.refresh_sampler()
        experiences = self.rollout(samples, n)
        self.assign_advantages(experiences, n)
        trained = [e for e in experiences if e.sample.task != "policy" or config.spark.mode != "reward-only"]
        metrics.update(self.update(trained))
        all_experiences = list(experiences)

        if self.recycle_config is not None:
            policy = [e for e in experiences if e.sample.task == "policy"]
            groups = [RolloutGroup(policy[i].sample, [e.response for e in policy[i:i + n]],
                                   [e.reward for e in policy[i:i + n]]) for i in range(0, len(policy), n)]
            rng = random.Random(step_seed(config.data.seed, self.step, self.world.rank, salt=1))
            recycled, recycle_stats = recycle(groups, self.recycle_config, rng)
            self.queue.push(recycled)
            metrics.update(self.label_balance(recycle_stats))
            if config.spark.schedule == "separate":
                self.refresh_sampler()
                recycled_experiences = self.rollout(self.queue.pop(len(self.queue)), n, salt=2 ** 20)
                self.assign_advantages(recycled_experiences, n)
                recycled_update = self.update(recycled_experiences)
                metrics.update({f"recycled/{k}": v for k, v in recycled_update.items()})
                all_experiences += recycled_experiences

        metrics.update(self.rollout_metrics(all_experiences))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics.update(self.timings)
        metrics["time/step"] = time.time() - started
        metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["time/step"]
        if config.run.sample_every and self.step % config.run.sample_every == 0:
            shown = {}
            for e in all_experiences:
                shown.setdefault(e.sample.task, e)
            self.metrics.log_samples(self.step, [{"task": e.sample.task, "prompt": e.sample.prompt,
                                                  "image": e.sample.image, "response": e.response,
                                                  "gold": e.sample.gold, "reward": e.reward} for e in shown.values()])
        return metrics

    def rollout_metrics(self, experiences: list[Experience]) -> dict[str, float]:
        """Reward per task (policy accuracy, judge accuracies, reflection success), lengths, truncation."""
        tasks = ("policy", "pointwise", "pairwise", "reflection")
        local = []
        for task in tasks:
            rewards = [e.reward for e in experiences if e.sample.task == task]
            local += [sum(rewards), len(rewards)]
        lengths = [len(e.response_ids) for e in experiences]
        local += [sum(lengths), len(lengths), sum(e.truncated for e in experiences)]
        totals = all_reduce(local)
        longest = all_reduce([max(lengths, default=0)], op="max")[0]
        metrics = {f"reward/{task}": totals[2 * i] / totals[2 * i + 1]
                   for i, task in enumerate(tasks) if totals[2 * i + 1]}
        count = max(totals[-2], 1)
        metrics.update({"response_len/mean": totals[-3] / count, "response_len/max": longest,
                        "truncation_rate": totals[-1] / count, "generated_tokens": totals[-3]})
        return metrics

    def label_balance(self, stats: dict) -> dict[str, float]:
        """Recycled sample counts and the Yes / A label fractions over all ranks."""
        local = {k: stats.get(k, 0) for k in ("pointwise", "pairwise", "reflection")}
        local["pointwise_yes"] = stats.get("pointwise_yes_frac", 0.0) * local["pointwise"]
        local["pairwise_a"] = stats.get("pairwise_a_frac", 0.0) * local["pairwise"]
        keys = sorted(local)
        totals = dict(zip(keys, all_reduce([float(local[k]) for k in keys])))
        metrics = {f"recycle/{k}": totals[k] for k in ("pointwise", "pairwise", "reflection")}
        if totals["pointwise"]:
            metrics["recycle/yes_frac"] = totals["pointwise_yes"] / totals["pointwise"]
        if totals["pairwise"]:
            metrics["recycle/a_frac"] = totals["pairwise_a"] / totals["pairwise"]
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy held-out policy accuracy and balanced pointwise judge accuracy (mean of the Yes-row and
        No-row accuracies), each rank on every world_size-th row."""
        self.refresh_sampler()
        metrics = {}
        policy = self.eval_sets["policy"][self.world.rank::self.world.size]
        if self.eval_sets["policy"]:
            correct, count = all_reduce([sum(e.reward for e in self.rollout(policy, 1, greedy=True)), len(policy)])
            metrics["eval/policy_acc"] = correct / count
        judge = self.eval_sets["pointwise"][self.world.rank::self.world.size]
        if self.eval_sets["pointwise"]:
            experiences = self.rollout(judge, 1, greedy=True)
            tallies = []
            for label in ("Yes", "No"):
                rows = [e for e in experiences if e.sample.gold == label]
                tallies += [sum(parse_judgment(e.response, "pointwise") == label for e in rows), len(rows)]
            yes_right, yes, no_right, no = all_reduce(tallies)
            metrics["eval/judge_acc"] = 0.5 * (yes_right / max(yes, 1) + no_right / max(no, 1))
        return metrics

    def train(self) -> dict[str, float]:
        run = self.config.run
        warmup = max(1, int(self.config.optim.warmup_ratio * self.total_steps))
        last_eval: dict[str, float] = {}
        if run.eval_every and self.step == 0:
            last_eval = self.evaluate()
            self.metrics.log(0, last_eval, self.total_steps)
        while self.step < self.total_steps:
            scale = cosine_lr(self.step, self.total_steps, warmup, self.config.optim.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.optim.lr * scale
            metrics = self.train_step()
            self.step += 1
            if run.eval_every and (self.step % run.eval_every == 0 or self.step == self.total_steps):
                last_eval = self.evaluate()
                metrics.update(last_eval)
            self.metrics.log(self.step, metrics, self.total_steps)
            if run.save_every and self.step % run.save_every == 0 and self.step < self.total_steps:
                self.save()
            if run.export_every and self.step % run.export_every == 0:
                self.export()
        self.save()
        self.export()
        self.metrics.close()
        return last_eval

    # ---- checkpoints --------------------------------------------------------------------------------

    def save(self) -> None:
        queues = all_gather_objects(self.queue.state_dict())
        state = {"step": self.step, "seed": self.config.data.seed, "world_size": self.world.size,
                 "cursor": self.step * self.config.data.prompts_per_step, "queues": queues}
        self.checkpointer.save(self.step, self.policy, self.optimizer, state)

    def resume(self) -> None:
        if self.world.is_main:
            self.checkpointer.remove_stale()
        dist.barrier()
        latest = self.checkpointer.latest()
        if latest is None:
            return
        state = self.checkpointer.load(latest, self.policy, self.optimizer)
        self.step = state["step"]
        # The recycle queue is re-dealt over however many ranks there are now.
        samples = [sample for queue in state["queues"] for sample in queue["samples"]]
        self.queue.load_state_dict({"samples": samples[self.world.rank::self.world.size]})
        if self.world.is_main:
            print(f"resumed from {latest} at step {self.step}", flush=True)

    def export(self) -> None:
        """The policy as a Hugging Face directory (config, weights, tokenizer, chat template)."""
        self.refresh_sampler()
        if self.world.is_main:
            final, tmp = self.out_dir / "export", self.out_dir / "export.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(self.sampler, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        dist.barrier()
