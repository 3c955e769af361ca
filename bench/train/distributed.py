"""One run trained data-parallel over several processes: `torchrun --nproc-per-node N -m bench train ...`.

torchrun starts N copies of the command and sets RANK, WORLD_SIZE and LOCAL_RANK in
each; `init` reads them and joins the process group (NCCL on CUDA, one GPU per
process, `cuda:LOCAL_RANK`; gloo on the CPU). Without them, or with WORLD_SIZE 1,
nothing here does anything and every helper answers as a single process would.

The semantics are the single-process run's, spread out:
* `batch_size` is the GLOBAL batch: every rank draws the same shuffled order and the
  same augmentation for the whole batch (one generator, same seed), then keeps its own
  contiguous 1/world slice (`shard`, `bench.data.Dataset.batches`). Each image is
  therefore seen, and augmented, exactly as in a single-process run with that seed.
* Every rank builds the model from the same seed; DDP also broadcasts rank 0's
  parameters and buffers when it wraps the model.
* DDP all-reduces the gradients. A last, short global batch may split unevenly (7 and 6
  images); each rank's mean gradient is then weighted by its share of the global batch
  (`set_share`, a DDP communication hook), so the sum is the single-process gradient.
* Batch norm stays per rank (no SyncBatchNorm): each rank normalises over its own
  slice, batch_size / world images, which for the classic nets is statistics over
  a large enough batch. Evaluation uses rank 0's running statistics (`sync_buffers`).
* Running losses and evaluation counts are summed over ranks; the epoch's row and the
  caller's stop decision are rank 0's, broadcast, so that every rank agrees on
  divergence, the plateau rule and early stops.
* Only rank 0 writes files and logs.

Results match a single-process run up to float summation order (the all-reduce sums
per-rank gradients where one process sums per-image ones).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from bench.errors import UserError

# The weight of this rank's mean gradient in the all-reduced sum: its images over the
# global batch's. Process-wide, like the process group it belongs to.
_share = 1.0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when not launched by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device, batch_size: int) -> bool:
    """Join the process group when torchrun launched several processes; whether it did.

    Checks that the global batch splits evenly before any process waits on another.
    Ranks other than 0 log only errors from here on.
    """
    world = env_world_size()
    if world <= 1 or active():
        return False
    if batch_size % world:
        raise UserError(
            f"batch_size {batch_size} does not split over {world} processes; the batch is the "
            f"global one, so pass a multiple of {world} (e.g. {world * max(1, batch_size // world)})"
        )
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"data-parallel training runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if device.type == "cuda":
        gpu = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(gpu)
        # device_id binds NCCL to this GPU now, rather than guessing it at the first collective.
        dist.init_process_group("nccl", device_id=gpu)
    else:
        dist.init_process_group("gloo")
    if not is_main():
        logging.getLogger().setLevel(logging.ERROR)
    return True


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and logs: rank 0, or the only process."""
    return rank() == 0


def shard() -> tuple[int, int] | None:
    """(rank, world) for `Dataset.batches(shard=...)`: this rank's slice of every batch; None alone."""
    return (rank(), world_size()) if active() else None


def place(device: torch.device) -> torch.device:
    """This process's device: a CUDA run uses the GPU of its local rank."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def check_split(n_train: int, batch_size: int) -> None:
    """Every rank must take part in every step: the last, short batch needs an image for each."""
    world, last = world_size(), n_train % batch_size
    if 0 < last < world:
        raise UserError(
            f"the last batch of each epoch holds {last} of the {n_train} training images, fewer than "
            f"the {world} processes; change batch_size or the number of training images"
        )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (its gradients all-reduced, weighted by `set_share`); itself alone."""
    if not active():
        return model
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ddp.register_comm_hook(None, _weighted_sum)
    return ddp


def set_share(local: int, global_: int) -> None:
    """Before a step: this rank holds `local` of the global batch's `global_` images."""
    global _share
    _share = local / global_


def with_shares(batches, batch_size: int, n_images: int):
    """Each of an epoch's `batches` (this rank's slices of its global batches), this rank's
    share of that global batch set (`set_share`) before the step that takes it."""
    for i, (x, y) in enumerate(batches):
        set_share(len(y), min(batch_size, n_images - i * batch_size))
        yield x, y


def _weighted_sum(_state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP's own hook divides by the world size; weighting by the share instead is the
    same for an even split and right for the uneven last batch. Returns a future of the sum."""
    grads = bucket.buffer().mul_(_share)
    return dist.all_reduce(grads, async_op=True).get_future().then(lambda fut: fut.value()[0])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks (in place); `t` itself alone."""
    if active():
        dist.all_reduce(t)
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (any picklable value); `obj` itself alone."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, as the checkpoint holds them."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. decoding a data set into the cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def describe() -> dict:
    """For the run's summary: how many processes trained it."""
    return {"world_size": world_size()}
