"""The ratio table of the benchmarks: every group times one operator at one size on several backends in
the same run; the summary divides each baseline's median (the `torch` oracle and, where there is one,
a vectorised plain-PyTorch version, `torch-vectorised`; for the exact Banzhaf estimator, the sampled ones it
replaces, `paired-100` and `paired-1000`) by each kernel backend's median."""

import os

import torch

BASELINES = ("torch", "torch-vectorised", "clip-mean-pooling", "paired-100", "paired-1000")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        if bench.stats is None or not getattr(bench.stats, "rounds", 0):
            continue
        params = bench.params or {}
        backend = str(params.get("backend", params.get("model_kind", params.get("variant", bench.name))))
        groups.setdefault(bench.group, {})[backend] = bench.stats.median
    lines = []
    for group, medians in sorted(groups.items(), key=lambda kv: str(kv[0])):
        for backend, median in sorted(medians.items(), key=lambda kv: str(kv[0])):
            if backend in BASELINES:
                continue
            ratios = "  ".join(
                f"{name} {medians[name] * 1e3:10.3f} ms -> x{medians[name] / median:7.1f}"
                for name in BASELINES
                if name in medians
            )
            lines.append(f"{group:<58} {backend:>6} {median * 1e3:10.3f} ms | {ratios}")
    if lines:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        terminalreporter.write_sep("=", f"speed-up over the plain-PyTorch baselines, same run, on {device}")
        for line in lines:
            terminalreporter.write_line(line)
