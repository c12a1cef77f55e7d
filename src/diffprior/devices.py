"""Devices: which one to run on (one policy for every command), how many CPU threads, whether it computes
in bfloat16 natively, waiting for it, and naming it in reports."""

from __future__ import annotations

import ctypes
import os
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

Result = TypeVar("Result")


def pick_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' (or None): CUDA when available, else the CPU, the only fallback; any other name must be a
    device of this machine (a ValueError says what there is). Under torchrun (`local_rank` given), 'auto'
    and 'cuda' mean this process's own GPU, cuda:local_rank."""
    if name in (None, "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= n:
            raise ValueError(f"device {name!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {name!r}: the CPU is one device; use --device cpu (--threads sets its cores)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(samples: int = 5) -> int:
    """How many cores other processes are using now: the kernel's count of running threads (procs_running
    in /proc/stat, the median of a few readings 10 ms apart) less this process's own; without /proc, the
    1-minute load average."""
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(0.01)
            stat = Path("/proc/stat").read_text()
            counts.append(int(next(line.split()[1] for line in stat.splitlines() if line.startswith("procs_running"))))
        return max(0, sorted(counts)[len(counts) // 2] - 1)
    except (OSError, StopIteration, ValueError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


def set_cpu_threads(requested: int | None = None) -> int:
    """Set torch's CPU threads and return the count: `requested`, else OMP_NUM_THREADS when set, else the
    cores that other processes leave idle (`busy_cores`; at least 1), shared among the processes torchrun
    started on this machine.

    On a busy machine more threads than idle cores is far slower, not faster: each of the network's
    parallel operations waits for the thread the scheduler has parked (2 threads beside one busy core ran
    a face-model step 15x slower than 1 thread)."""
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if requested is None:
        idle = cpu_cores() - busy_cores()
        requested = max(1, idle // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if requested < 1:
        raise ValueError(f"--threads {requested}: must be at least 1")
    torch.set_num_threads(requested)
    return requested


class _Stopped(BaseException):
    """Raised in a `side_by_side` worker thread to stop its job when the caller stops early."""


def side_by_side(jobs: Sequence[Callable[[], Result]], workers: int) -> Iterator[tuple[int, Result]]:
    """Run independent CPU jobs `workers` at a time, each on one CPU thread, and yield (index, result) as each
    finishes; a job's exception is raised here. With one worker (or one job) they run in order on torch's
    threads as set.

    A network of a few million parameters on a single 64x64 image keeps 2 cores only partly busy (1.45x one
    thread's speed); two such jobs side by side, one thread each, ran 1.25x faster than the same two one after
    the other on both threads (faces64 on a 2-core AMD EPYC, float32). Stopped early (a job's error, Ctrl-C,
    the caller leaving the loop), it starts no more jobs and stops the running ones at their next line of
    Python (a thread left running into the interpreter's exit aborts it); torch's thread count is restored."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        for i, job in enumerate(jobs):
            yield i, job()
        return
    todo, done = queue.SimpleQueue(), queue.SimpleQueue()
    for item in enumerate(jobs):
        todo.put(item)

    def work() -> None:
        try:
            while True:
                try:
                    i, job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, job(), None))
                except Exception as e:  # noqa: BLE001 - raised again in the caller's thread
                    done.put((i, None, e))
        except _Stopped:
            pass

    threads, pool = torch.get_num_threads(), [threading.Thread(target=work) for _ in range(workers)]
    torch.set_num_threads(1)  # each worker's operations run on its own thread
    finished = 0
    try:
        for thread in pool:
            thread.start()
        while finished < len(jobs):
            i, result, error = done.get()
            finished += 1
            if error is not None:
                raise error
            yield i, result
    finally:
        if finished < len(jobs):
            while not todo.empty():
                todo.get_nowait()
            for thread in pool:
                if thread.is_alive():
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Stopped))
        for thread in pool:
            thread.join()
        torch.set_num_threads(threads)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with the
    AVX-512 BF16 or AMX instructions (elsewhere CPU bf16 is emulated, and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[1].split()))


DTYPES = ("auto", "fp32", "bf16")


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the device computes it natively, else 'fp32'; 'fp32' and 'bf16' as given."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return ("bf16" if native_bf16(device) else "fp32") if dtype == "auto" else dtype


def sync(device: torch.device) -> None:
    """Wait until the device has finished its queued work (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """The device in words, for reports: the GPU's name, or the CPU's model with its cores and torch threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({cpu_cores()} cores, {torch.get_num_threads()} torch threads)"
