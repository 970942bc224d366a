"""Where training runs: the device, and the process group under torchrun."""

import os

import torch

__all__ = ["DistContext", "resolve_device"]


def resolve_device(device="auto", local_rank=None):
    """The torch.device for a ``--device`` value: "auto" is CUDA when available, else
    the CPU. A CUDA device without an index gets ``local_rank % device_count`` when
    `local_rank` is given (one GPU per torchrun process)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


class DistContext:
    """Process group set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK):
    gloo on CPU, nccl on CUDA. A single process when WORLD_SIZE is unset or 1."""

    def __init__(self, device="auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, self.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.device = dev
        self.owns_group = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
                self.owns_group = True

    @property
    def main(self):
        return self.rank == 0

    def all_reduce(self, t):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
