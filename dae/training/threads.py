"""CPU threads: each dae process takes its share of the cores when several run at once.

PyTorch gives every process one thread per core. Two trainings on the same cores then run twice as many
threads as there are cores, and OpenMP threads that wait for each other spin on the cores the other process
needs, so both slow down far more than twofold. Each dae process therefore registers in a folder of lock
files (one per process, ``DAE_CORE_REGISTRY`` or ``<tempdir>/dae-cores-<uid>``) and uses
``cores // processes`` threads, where the cores are those it may run on (its CPU affinity, and a cgroup CPU
quota). A process that ends, even by a crash, drops out: the kernel releases its lock. A lone process keeps
PyTorch's default. ``OMP_NUM_THREADS`` set by hand wins over all of this (for machines whose other load dae
cannot see); a process started with it still counts as one of the sharers.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no registry, every process keeps PyTorch's default
    fcntl = None

REGISTRY_ENV = "DAE_CORE_REGISTRY"
EXPLICIT_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


# CPU flags of bfloat16 arithmetic: AVX-512 BF16 and AMX (x86), BF16 (Arm).
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes in bfloat16 natively (True), only by emulation (False), or cannot tell (None,
    e.g. not Linux). Without it, bf16-mixed training on the CPU runs many times slower than fp32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & BF16_FLAGS) if flags else None


def default_registry() -> Path:
    """The folder of lock files that concurrent dae processes share."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(os.environ.get(REGISTRY_ENV) or Path(tempfile.gettempdir()) / f"dae-cores-{uid}")


class CoreShare:
    """This process's entry in the registry, and the thread count that gives it a fair share of the cores."""

    def __init__(self, registry: Path | None = None, cores: int | None = None) -> None:
        self.registry = Path(registry) if registry is not None else default_registry()
        self.cores = cores if cores is not None else available_cores()
        self.default_threads = torch.get_num_threads()
        self.explicit = any(os.environ.get(name) for name in EXPLICIT_ENVS)
        self._entry = None  # the open, locked file that says this process is running

    def join(self) -> None:
        """Register this process (once); its lock file lives, and stays locked, until the process ends."""
        if self._entry is not None or fcntl is None:
            return
        self.registry.mkdir(parents=True, exist_ok=True)
        # Locked before it is renamed into view, so that other processes never take it for a dead one's.
        fd, temporary = tempfile.mkstemp(dir=self.registry, prefix=".new-")
        entry = os.fdopen(fd, "w")
        fcntl.flock(entry, fcntl.LOCK_EX)
        name = self.registry / f"{os.getpid()}-{Path(temporary).name[5:]}"
        os.replace(temporary, name)
        self._entry, self._name = entry, name

    def processes(self) -> int:
        """dae processes in the registry now (this one included); dead ones' files are removed on the way."""
        if fcntl is None or self._entry is None:
            return 1
        count = 0
        for path in self.registry.iterdir():
            if path.name.startswith(".new-"):
                continue
            if path == self._name:
                count += 1
                continue
            try:
                with open(path) as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only when its process is gone
                    path.unlink(missing_ok=True)
            except BlockingIOError:
                count += 1
            except OSError:  # removed meanwhile by another process
                pass
        return max(count, 1)

    def threads(self) -> int:
        """This process's share: PyTorch's default when alone, ``cores // processes`` (at least 1) otherwise."""
        return max(1, min(self.default_threads, self.cores // self.processes()))

    def apply(self) -> int:
        """Set PyTorch's intra-op threads to this process's share (unless given by hand); returns them."""
        if self.explicit:
            return torch.get_num_threads()
        threads = self.threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


_SHARE: CoreShare | None = None


def share_cores(registry: Path | None = None) -> CoreShare:
    """Register this process as a dae process and take its share of the cores, inter-op threads included.

    Call it early, before the first parallel operation (the ``dae`` command does); processes that start dae
    work another way (e.g. trials of a sweep run in child processes) can call it too. Calling it again
    only re-checks the share, e.g. after other processes started or ended.
    """
    global _SHARE
    if _SHARE is None:
        _SHARE = CoreShare(registry)
        _SHARE.join()
        threads = _SHARE.apply()
        if not _SHARE.explicit and threads < _SHARE.default_threads:
            try:  # only possible before the first inter-op work; dae's CPU work hardly uses that pool anyway
                torch.set_num_interop_threads(threads)
            except RuntimeError:
                pass
    else:
        _SHARE.apply()
    return _SHARE


def fix_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads from now on: a count chosen by hand, which, like ``OMP_NUM_THREADS``,
    wins over the share that ``reshare_cores`` (the ``core_share`` callback) would take."""
    torch.set_num_threads(threads)
    if _SHARE is not None:
        _SHARE.explicit = True


def reshare_cores() -> None:
    """Re-check the share of a process that ``share_cores`` registered (nothing otherwise)."""
    if _SHARE is not None:
        _SHARE.apply()

