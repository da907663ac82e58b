"""The tensor-parallel sampler against the plain one, on every rank of a torchrun group (T = the world size).

torchrun --nproc_per_node T tests/generation/dist_tensor_parallel.py CHECKPOINT VL_CHECKPOINT|- RESULT.pt
Rank 0 saves what tests/generation/test_tensor_parallel.py checks: the plain and the sharded sampler's greedy and
seeded tokens and log-probs, the union sampling of the group's prompts against each rank's own, the shard copied
from FSDP shards against the one read from the checkpoint, and the largest tensor made while copying and sampling;
with a VL checkpoint, the same for prompts with images (each rank its own) and its copy from FSDP shards.
"""

import functools
import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spark.distributed.groups import close_distributed, init_distributed, shard_model  # noqa: E402
from spark.distributed.resharding import copy_to_tensor_parallel  # noqa: E402
from spark.evaluation.verdicts import next_token_logits  # noqa: E402
from spark.generation.chat import ChatPrompt, load_chat_model  # noqa: E402
from spark.generation.sampler import Sampling, SamplingParams, generate  # noqa: E402
from spark.generation.tensor_parallel import load_sharded_model, split_of, tensor_parallel_group  # noqa: E402
from spark.models import load_model  # noqa: E402

PROMPTS = [[5, 17, 40, 9], [120, 3, 3, 77, 200, 31, 8], [250, 251]]


class LargestTensor(TorchDispatchMode):
    """The most elements of any plain tensor an op makes while it is on (a DTensor's op is seen again as the op on
    its local shard: the DTensor itself holds no more memory than that)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if type(tensor) is torch.Tensor:
                self.numel = max(self.numel, tensor.numel())
        return out


def sample(model, **kwargs):
    params = SamplingParams(max_new_tokens=8, **kwargs)
    out = generate(model, PROMPTS, params, n=[2, 1, 3], seed=11)
    return out.tokens, [logp.tolist() for logp in out.logprobs]


def copied_equal(checkpoint: str, tp) -> bool:
    """The policy's FSDP shards copied into a zeroed sampler shard equal the checkpoint's slices."""
    policy = load_model(checkpoint, prepare=functools.partial(shard_model, mixed_precision=False))
    shard = load_sharded_model(checkpoint, tp)
    for tensor in shard.state_dict().values():
        tensor.zero_()
    with torch.no_grad():
        copy_to_tensor_parallel(policy, shard, tp)
    reference = load_sharded_model(checkpoint, tp)
    return all(torch.equal(a, b) for a, b in zip(shard.state_dict().values(), reference.state_dict().values()))


def picture(seed: int) -> bytes:
    pixels = torch.randint(0, 256, (56, 84, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(encoded, format="PNG")
    return encoded.getvalue()


def vision_language(checkpoint: str, tp, rank: int) -> dict:
    """Each rank's own image prompts (and a text one), alone on the plain model and in the group's union."""
    alone = load_chat_model(checkpoint)
    together = load_chat_model(checkpoint, tensor_parallel=tp, sample_group=tp)
    questions = ["What is in the picture?", "Count the shapes.", "What is 2 + 2?"][:2 + rank % 2]
    images = [[picture(rank)], [picture(10 + rank), picture(20 + rank)], []][:len(questions)]
    out = {}
    for mode, knobs in (("greedy", {}), ("seeded", {"temperature": 1.0})):
        out[mode] = [[[(c.token_ids, c.logprobs.tolist()) for c in group]
                      for group in chat.generate(questions, images, n=2, seed=5 + rank, max_new_tokens=6, **knobs)]
                     for chat in (alone, together)]
    out["copied_equal"] = copied_equal(checkpoint, tp)
    return out


def main(checkpoint: str, vl_checkpoint: str, result: str) -> None:
    world = init_distributed()
    tp = tensor_parallel_group(world.size)
    full = load_model(checkpoint)
    shard = load_sharded_model(checkpoint, tp)
    out = {"greedy": (sample(full, temperature=0.0), sample(shard, temperature=0.0)),
           "seeded": (sample(full, temperature=1.0, top_k=50, top_p=0.9), sample(shard, temperature=1.0, top_k=50, top_p=0.9))}

    # The judge's verdict scoring (spark.evaluation.verdicts) prefills on the sampler's model too.
    out["verdict_logits"] = float((next_token_logits(full, PROMPTS, [{}] * 3) -
                                   next_token_logits(shard, PROMPTS, [{}] * 3)).abs().max())

    # Each rank's own prompts: alone on the plain model, together with the group's on the shard.
    mine = [PROMPTS[world.rank % len(PROMPTS)], [7 + world.rank, 9, 11]]
    alone = load_chat_model(checkpoint)
    together = load_chat_model(checkpoint, tensor_parallel=tp, sample_group=tp, max_batch_rows=2)
    alone.max_batch_rows = 2
    chat_prompts = [ChatPrompt(ids) for ids in mine]
    sampling = Sampling(max_new_tokens=6, temperature=1.0)
    out["union"] = [[[c.token_ids for c in group]
                     for group in chat.complete(chat_prompts[:1 + world.rank % 2], sampling, n=2, seed=3 + world.rank)]
                    for chat in (alone, together)]

    # The policy's FSDP shards -> a zeroed sampler shard; the largest tensor made while copying and sampling.
    policy = load_model(checkpoint, prepare=functools.partial(shard_model, mixed_precision=False))
    for tensor in shard.state_dict().values():
        tensor.zero_()
    with torch.no_grad(), LargestTensor() as largest:
        copy_to_tensor_parallel(policy, shard, tp)
        sample(shard, temperature=0.0)
    reference = load_sharded_model(checkpoint, tp)
    out["copied_equal"] = all(torch.equal(a, b) for a, b in zip(shard.state_dict().values(),
                                                                reference.state_dict().values()))
    if vl_checkpoint != "-":
        out["vl"] = vision_language(vl_checkpoint, tp, world.rank)
    out["largest"], out["largest_parameter"] = largest.numel, max(p.numel() for p in shard.parameters())
    out["split"] = {name: (split_of(name, full.config, tp.size) is not None, p.numel())
                    for name, p in full.named_parameters()}
    everyone = [None] * world.size
    dist.all_gather_object(everyone, out)
    if world.is_main:
        torch.save(everyone, result)


if __name__ == "__main__":
    main(*sys.argv[1:])
    close_distributed()
