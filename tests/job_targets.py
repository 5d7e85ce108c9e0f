"""Stand-ins for ``core.pipeline.prepare`` that the Prepare page's job processes run in tests
(``core.jobs.start(..., target="tests.job_targets:<name>")``): each behaves as a real job can, in a real
child process. ``NVE_TEST_GATE`` names a file the slow ones wait for."""
import os
import signal
import time
from pathlib import Path

from core.data import DataError


def _gate(seconds: float = 60) -> None:
    gate = Path(os.environ["NVE_TEST_GATE"])
    end = time.time() + seconds
    while not gate.exists() and time.time() < end:
        time.sleep(0.02)


def slow(cfg, experiment_id, *, cache_dir, progress, show_bars, log):
    progress("attack", 3, 12)
    log("hello")
    _gate()
    raise DataError("the images are gone")


def hang(cfg, experiment_id, *, cache_dir, progress, show_bars, log):
    progress("clean", 1, 2)
    time.sleep(600)


def out_of_memory(*args, **kwargs):
    raise MemoryError


def bug(*args, **kwargs):
    raise KeyError("/srv/secret/path")


def killed(*args, **kwargs):  # what the kernel's OOM killer does
    os.kill(os.getpid(), signal.SIGKILL)


def bus_error(*args, **kwargs):  # what writing a memory map on a full disk does
    os.kill(os.getpid(), signal.SIGBUS)
