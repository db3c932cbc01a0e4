"""Timing helpers shared by the benchmarks (wall-clock, synchronised on GPU)."""

from __future__ import annotations

import statistics
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn, warmup: int = 1, reps: int = 3) -> float:
    """Median seconds of fn() over reps, after warmup calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_load() -> str:
    import os

    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import os
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def interleaved(step, names, reps: int, warmup: int = 1, cpu: bool = False):
    """Median seconds of step(name) per variant, the variants timed in turn each round, so that
    load from other processes on a shared machine hits all of them alike (ratios stay meaningful).
    The warm-up calls are not timed. cpu=True also returns the median CPU seconds of this process
    (all its threads: time.process_time), which other processes' load disturbs far less than the
    wall clock: ({name: wall}, {name: cpu})."""
    for _ in range(warmup):
        for name in names:
            step(name)
    sync()
    wall = {name: [] for name in names}
    used = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            c0 = time.process_time()
            wall[name].append(time_fn(lambda: step(name), warmup=0, reps=1))
            used[name].append(time.process_time() - c0)
    med = {name: statistics.median(t) for name, t in wall.items()}
    return (med, {name: statistics.median(t) for name, t in used.items()}) if cpu else med


PEAK_MEMORY_MEASURE = {
    "cuda": "torch.cuda.max_memory_allocated() during the step minus memory_allocated() before it",
    "cpu": "running sum of the CPU allocator's allocations and frees during the step, recorded by "
           "torch.profiler(profile_memory=True); its maximum (the analogue of CUDA's peak above the "
           "pre-step allocation; the caching of the CPU allocator does not enter)",
}


def peak_memory_measure() -> str:
    return PEAK_MEMORY_MEASURE["cuda" if torch.cuda.is_available() else "cpu"]


def peak_memory(fn) -> int:
    """Peak bytes allocated by one call of fn above what was allocated before it (see
    PEAK_MEMORY_MEASURE). Run fn once before, so that lazily created state is not counted."""
    if torch.cuda.is_available():
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()  # negative for a free
        peak = max(peak, current)
    return peak


def load() -> str:
    """The load average (1, 5, 15 min): other sessions share the development machine."""
    import os
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
