"""GPU detection through `nvidia-smi` (the NVIDIA driver's own tool).

A missing, failing or silent `nvidia-smi` means no GPU: the platform then runs without the GPU
node unless `gpu: on` forces it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from .errors import Location, Problem

QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory: str


@dataclass(frozen=True)
class GpuState:
    mode: str  # auto | on | off
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    detail: str = ""

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def node_enabled(self) -> bool:
        """Whether the GPU Ray node (and the GPU overlay) is part of the project."""
        return self.mode == "on" or (self.mode == "auto" and self.count > 0)

    def describe(self) -> str:
        found = ", ".join(f"#{g.index} {g.name} ({g.memory})" for g in self.gpus) or "none"
        node = "GPU node on" if self.node_enabled else "GPU node off"
        return f"gpu: {self.mode}; detected: {found}{f' ({self.detail})' if self.detail else ''}; {node}"


def on_without_gpu(state: GpuState, where: Location) -> Problem | None:
    """`gpu: on` where nvidia-smi finds nothing: a warning that gives nvidia-smi's reason."""
    if state.mode != "on" or state.count:
        return None
    reason = state.detail or "nvidia-smi listed no GPU"
    return Problem(
        where, "$.gpu", f"on, but no GPU was detected ({reason}); the GPU node will start without GPUs unless the engine can hand them out", "warning"
    )


def parse_nvidia_smi(output: str) -> tuple[Gpu, ...]:
    """Parse `index, name, memory.total` CSV lines; lines that do not fit are skipped."""
    gpus = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        gpus.append(Gpu(int(parts[0]), ",".join(parts[1:-1]).strip(), parts[-1]))
    return tuple(gpus)


def detect(mode: str = "auto", run: Callable = subprocess.run, which: Callable = shutil.which, timeout: float = 10.0) -> GpuState:
    """Query nvidia-smi unless mode is `off`; never raises."""
    if mode == "off":
        return GpuState(mode, detail="not probed")
    if which("nvidia-smi") is None:
        return GpuState(mode, detail="nvidia-smi not found")
    try:
        proc = run(QUERY, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return GpuState(mode, detail=f"nvidia-smi failed: {exc}")
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout or "").strip().splitlines()
        return GpuState(mode, detail=f"nvidia-smi exited {proc.returncode}{': ' + msg[0] if msg else ''}")
    return GpuState(mode, parse_nvidia_smi(proc.stdout))
