"""GPU detection. A fake `nvidia-smi` on PATH stands in for the NVIDIA driver's tool, which
this machine lacks (no GPU here); it prints exactly what the real one prints for the query."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from cslr import gpu

REAL_OUTPUT = "0, NVIDIA A100-SXM4-40GB, 40960 MiB\n1, NVIDIA A100-SXM4-40GB, 40960 MiB\n"


def fake_nvidia_smi(tmp_path, stdout: str = REAL_OUTPUT, code: int = 0, record: bool = True):
    """Install a stand-in `nvidia-smi` that records its arguments and prints `stdout`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat <<'OUT'\n{stdout}OUT\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir


def test_parse_nvidia_smi_lines():
    gpus = gpu.parse_nvidia_smi(REAL_OUTPUT + "garbage\n")
    assert gpus == (gpu.Gpu(0, "NVIDIA A100-SXM4-40GB", "40960 MiB"), gpu.Gpu(1, "NVIDIA A100-SXM4-40GB", "40960 MiB"))


def test_auto_with_gpus_enables_the_gpu_node(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    state = gpu.detect("auto")
    assert state.count == 2 and state.node_enabled
    assert (tmp_path / "args").read_text().split() == gpu.QUERY[1:]
    assert "#0 NVIDIA A100-SXM4-40GB (40960 MiB)" in state.describe()


def test_failing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    # What the real tool does on a machine whose driver is not loaded.
    bindir = fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", code=9)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    state = gpu.detect("auto")
    assert state.count == 0 and not state.node_enabled
    assert "exited 9" in state.detail


def test_missing_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    state = gpu.detect("auto")
    assert (state.count, state.node_enabled, state.detail) == (0, False, "nvidia-smi not found")


def test_hanging_nvidia_smi_times_out():
    def run(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", 10)

    state = gpu.detect("auto", run=run, which=lambda _: "/usr/bin/nvidia-smi")
    assert not state.node_enabled and "failed" in state.detail


@pytest.mark.parametrize("mode,count,enabled", [("on", 0, True), ("off", 2, False), ("auto", 0, False), ("auto", 1, True)])
def test_mode_decides_the_gpu_node(mode, count, enabled):
    out = "".join(f"{i}, GPU, 1 MiB\n" for i in range(count))
    state = gpu.detect(mode, run=lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""), which=lambda _: "/x/nvidia-smi")
    assert state.node_enabled is enabled


def test_off_never_runs_nvidia_smi():
    def run(*a, **k):
        raise AssertionError("must not run")

    assert gpu.detect("off", run=run).detail == "not probed"
