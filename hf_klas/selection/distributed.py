"""Data-parallel selection under ``accelerate launch``: each process scores a shard of the calibration batches, the
float64 sums of the streamed pass are added up across processes, and every rank ends with the same Θ and plan.

Why sums, not means: Θ, Γ's denominators, the CE baseline and the entropies are ratios of sums over tokens, and a
token's terms do not depend on which process computed them. Adding every process's float64 sums and token counts
and dividing once gives the one-process result up to the order of float64 additions (~1e-15 relative).

Processes are accelerate's :class:`~accelerate.PartialState`. Launched with several processes (``WORLD_SIZE > 1``)
on a machine without an accelerator, the state is created with ``cpu=True`` (a gloo group): accelerate only builds a
CPU group on request, and ``accelerate launch --cpu`` itself starts a single process. A state the caller created
first (``Accelerator(...)``) is used as it is. One process, not launched: nothing here touches accelerate.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import broadcast, reduce


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_state() -> PartialState | None:
    """accelerate's process state when several processes run, else None (a plain single process)."""
    if launched_processes() <= 1:
        return None
    return PartialState(cpu=not torch.accelerator.is_available())


def num_processes() -> int:
    state = process_state()
    return 1 if state is None else state.num_processes


def is_main_process() -> bool:
    state = process_state()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = process_state()
    if state is not None:
        state.wait_for_everyone()


def shard(items: list) -> list:
    """This process's contiguous share of ``items`` (all of them in a single process); shares differ by one
    item at most, and a process may get none when there are fewer items than processes."""
    state = process_state()
    if state is None or state.num_processes == 1:
        return list(items)
    with state.split_between_processes(list(items)) as part:
        return list(part)


def sum_across_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every process's ``tensors`` added up (float64, on the CPU); unchanged in a single process."""
    state = process_state()
    if state is None or state.num_processes == 1:
        return [t.to(torch.float64) for t in tensors]
    moved = [t.to(state.device, torch.float64) for t in tensors]
    return [t.cpu() for t in reduce(moved, reduction="sum")]


def max_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``tensor`` over processes (float64, on the CPU)."""
    state = process_state()
    if state is None or state.num_processes == 1:
        return tensor.to(torch.float64)
    return reduce(tensor.to(state.device, torch.float64), reduction="max").cpu()


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every process (one collective; the flag itself in a single process)."""
    if num_processes() == 1:
        return bool(flag)
    total = sum_across_processes([torch.tensor([1.0 if flag else 0.0])])[0]
    return int(total[0]) == num_processes()


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy the main process's parameters and buffers into ``module`` on every process (trained probes: each
    rank fits the same probe on the same data; this makes them bitwise equal whatever the hardware did)."""
    state = process_state()
    if state is None or state.num_processes == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        t.copy_(broadcast(t.detach().to(state.device).contiguous(), from_process=0).to(t.device))
