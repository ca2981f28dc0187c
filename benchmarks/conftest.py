"""Shared pieces of the benchmarks: which backends to time here, and a ratio table against `torch`.

Every benchmark group times one operator at one size on several backends in the same run; the summary
printed at the end divides the `torch` backend's median by each other backend's median.
"""
import os

import pytest
import torch

from hbi_ops import _dispatch


def devices():
    return ["cuda"] if torch.cuda.is_available() else ["cpu"]


def backends_for(op, device):
    """Backends able to run `op` on `device` here, the oracle included (the baseline)."""
    return [b for b in _dispatch.BACKENDS if _dispatch.why_not(b, op, torch.device(device)) is None]


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def on_gpu():
    return torch.cuda.is_available()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        if bench.stats is None or not getattr(bench.stats, "rounds", 0):
            continue
        backend = bench.params.get("backend") if bench.params else None
        groups.setdefault(bench.group, {})[backend] = bench.stats.median
    lines = []
    for group, medians in sorted(groups.items(), key=lambda kv: str(kv[0])):
        baseline = medians.get("torch")
        for backend, median in sorted(medians.items(), key=lambda kv: str(kv[0])):
            if backend == "torch" or baseline is None:
                continue
            lines.append(f"{group:<70} {backend:>7}: {median * 1e3:10.3f} ms  "
                         f"torch {baseline * 1e3:10.3f} ms  speed-up x{baseline / median:8.1f}")
    if lines:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        terminalreporter.write_sep("=", f"speed-up over the torch backend, same run, on {device}")
        for line in lines:
            terminalreporter.write_line(line)
