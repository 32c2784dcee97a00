"""Where a run ran: the machine facts that decide its speed, recorded in every run's ``config.json``.

Why: the same config trains several times faster on one CPU than on another (AVX-512/AMX vs AVX2 only:
docs/results.md), so a time or throughput quoted from a run is only meaningful next to the host it was
measured on.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

# Instruction-set flags that decide torch's CPU speed (the subset present is recorded).
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> tuple[str | None, list[str]]:
    """(CPU model name, the :data:`CPU_FLAGS` present) from ``/proc/cpuinfo``; (None, []) without it."""
    model, flags = None, set()
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model is not None and flags:
            break
    return model, [f for f in CPU_FLAGS if f in flags]


def host_record(device: Any = None, *, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """python, torch, cpu, cpu_model, cpu_flags, cores, threads, cuda, device, date (UTC).

    ``device`` is the device the run trains on (a ``torch.device`` or its name); None = cuda when
    available, else cpu. ``cuda`` is the name of the GPU (the training one when ``device`` is CUDA,
    else GPU 0) or None on a machine without CUDA.
    """
    import torch

    model, flags = cpu_info(cpuinfo)
    has_cuda = torch.cuda.is_available()
    dev = None if device is None else torch.device(device)
    kind = ("cuda" if has_cuda else "cpu") if dev is None else dev.type
    index = (dev.index or 0) if dev is not None and dev.type == "cuda" else 0
    gpu = torch.cuda.get_device_name(index) if has_cuda else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": gpu,
        "device": kind,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda when available else cpu; a one-line error for cuda on a machine without it.

    It lives with the host facts (not in the training package) so that config checks, loaders and
    trainers ask one leaf module, with no import cycle between them."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=cpu.")
    return torch.device(name)
