"""Training checkpoints with `torch.distributed.checkpoint` (DCP), saved atomically, and the Hugging Face export.

A checkpoint is a folder `step_00000010/` holding the sharded model and optimizer state (DCP reshards
them on load, so a run can resume on a different number of ranks), `trainer.json` (step, recycle
queue, and what makes the run the run it is: `check_same_run` compares that at resume) and, written
last, `manifest.json` (step, world size, config hash, every other file with its size). It is written as
`step_00000010.tmp/` and renamed only when complete, so a run killed mid-save keeps its previous
checkpoint; stale `.tmp` folders are removed on the next start. A checkpoint whose files do not match
its manifest (a copy cut short, a truncated file) is skipped at resume with a warning naming it, and
the one before it is used.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from spark.distributed.groups import copy_full_weights
from spark.errors import UserError
from spark.models import save_model
from spark.models.checkpoint import checkpoint_dtype

TRAINER_STATE = "trainer.json"
MANIFEST = "manifest.json"
FOLDER = re.compile(r"step_(\d{8})")


class Checkpointer:
    def __init__(self, folder: str | Path, keep_last: int):
        self.folder, self.keep_last = Path(folder), keep_last

    def finished(self) -> list[Path]:
        """Published checkpoint folders (not `.tmp`), oldest first; whether their files are whole is `verify`'s."""
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and FOLDER.fullmatch(p.name))

    def latest(self) -> Path | None:
        """The newest checkpoint that matches its manifest; each newer one that does not is skipped with a
        warning naming it."""
        for path in reversed(self.finished()):
            problem = verify(path)
            if problem is None:
                return path
            warnings.warn(f"skipping checkpoint {path}: {problem}; trying the one before it", stacklevel=2)
        return None

    def save(self, step: int, model: nn.Module, optimizer, trainer_state: dict, config_hash: str = "") -> Path:
        """Collective: every rank calls it. Rank 0 writes trainer.json and the manifest, and publishes the
        folder; then checkpoints older than the last `keep_last` whole ones are removed."""
        final = self.folder / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=tmp)
        if dist.get_rank() == 0:
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state))
            write_manifest(tmp, step=step, world_size=dist.get_world_size(), config_hash=config_hash)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self.prune()
        dist.barrier()
        return final

    def prune(self) -> None:
        """Remove every checkpoint older than the `keep_last` newest whole ones (a torn one newer than those is
        left for the run to overwrite, or for a person to look at)."""
        whole = [p for p in self.finished() if verify(p) is None]
        for old in self.finished():
            if whole and old < whole[-self.keep_last:][0]:
                shutil.rmtree(old)

    def load(self, path: Path, model: nn.Module, optimizer) -> None:
        """Collective: restore model and optimizer in place."""
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])

    def trainer_state(self, path: Path) -> dict:
        """The trainer's own state saved with the checkpoint (step, recycle queues, run identity)."""
        return json.loads((path / TRAINER_STATE).read_text())

    def remove_stale(self) -> None:
        for tmp in self.folder.glob("step_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(folder: Path, *, step: int, world_size: int, config_hash: str) -> None:
    """manifest.json: the step, the world size that wrote it, the config's hash, and every file of the
    folder (relative path -> bytes). Written last: a folder without one was not finished."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"step": step, "world_size": world_size, "config_hash": config_hash, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def verify(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder against its manifest (None if nothing): no or unreadable
    manifest, another step than the folder's name, a listed file missing or of another size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        step, files = manifest["step"], manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (its save did not finish)"
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e!r})"
    name = FOLDER.fullmatch(folder.name)
    if name and int(name.group(1)) != step:
        return f"{MANIFEST} is of step {step}"
    for file, size in files.items():
        path = folder / file
        if not path.is_file():
            return f"{file} is missing"
        if path.stat().st_size != size:
            return f"{file} is {path.stat().st_size} bytes, the manifest says {size}"
    return None


def check_same_run(saved: dict, current: dict, checkpoint: Path, *, force: bool) -> None:
    """A checkpoint resumes only the run that wrote it: `saved` and `current` name what a run's steps mean
    (seed, model, data files and their subset, group size, prompts per step). A difference is an error
    unless `force`."""
    changed = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in current.items() if saved.get(key) != value]
    if changed and not force:
        raise UserError(f"{checkpoint} is of another run ({'; '.join(changed)}); resume it with run.resume=force, "
                         "or write this run to another run.out_dir")


def export_model(sharded: nn.Module, plain: nn.Module, folder: Path) -> None:
    """Collective: the sharded model as a Hugging Face directory (config, weights, tokenizer, chat template)
    in the dtype of the checkpoint it was loaded from (its config.json's), through its plain copy `plain`;
    written to `folder.tmp` and renamed, so a reader never sees half of it.

    When `plain` holds another dtype (a bf16 sampler of an fp32 checkpoint), or is a tensor-parallel shard
    (spark.generation.tensor_parallel: its fused parts still name the checkpoint's tensors), the fp32 master
    weights are gathered instead, one tensor at a time, and rank 0 keeps each in the checkpoint's dtype in host
    memory (so the export does not lose their precision, and host memory holds the checkpoint's size, not the
    fp32 model's)."""
    dtype = checkpoint_dtype(plain.hf_config)
    state = None
    if dtype == next(plain.parameters()).dtype and getattr(plain, "tensor_parallel", None) is None:
        copy_full_weights(sharded, plain)
    else:
        device, state = next(plain.parameters()).device, {}
        for name, shard in sharded.state_dict().items():
            if name == "lm_head.weight" and sharded.config.tie_word_embeddings:
                continue
            full = shard.to(device).full_tensor() if isinstance(shard, DTensor) else shard  # collective
            if dist.get_rank() == 0:
                state[name] = full.to("cpu", dtype)
    if dist.get_rank() == 0:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(plain, tmp, state=state)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    dist.barrier()
