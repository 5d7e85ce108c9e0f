"""Prepare jobs started from the app, each in a process of its own.

A job is ``python -m core.jobs`` in a child process (a new session, so cancelling it stops everything it
started): the config goes in as JSON on stdin, and the child reports on stdout, one JSON object a line::

    {"event": "progress", "stage": "attack", "done": 3, "total": 12}
    {"event": "log", "text": "..."}
    {"event": "done", "path": "..."}   or   {"event": "error", "message": "..."}

so a crash, an out-of-memory kill or a SIGBUS ends the job, never the server. The child asks the kernel
to kill it first when memory runs out (``oom_score_adj`` 1000), and its stderr (tracebacks of bugs) goes to
the server's log, never to a user.

The registry lives in the server process (a module-level dict under a lock), keyed by (cache folder,
experiment id): every session sees every job, one id runs once per server, and at most
``core.hosting.settings().max_jobs`` run at once (``NVE_MAX_JOBS``; default 1). ``prepare`` also holds a
file lock per id, so a second server or the CLI cannot write the same store meanwhile. ``cancel`` stops a
job: what it finished stays in ``cache/.partial-<id>/``, and starting the same id with the same settings
resumes there.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from core.config import ConfigError, ExperimentConfig
from core.data import DataError
from core.hosting import ROOT, settings
from core.models import ModelError
from core.pipeline import STAGES, PrepareError
from core.store import StoreError, validate_id

log = logging.getLogger(__name__)
USER_ERRORS = (ConfigError, DataError, ModelError, StoreError, PrepareError)
DEFAULT_TARGET = "core.pipeline:prepare"
STAGE_TEXT = {"load": "loading the dataset and the model", "clean": "predicting every image",
              "attack": "attacking the correctly classified images", "features":
              "recording the neurons' activations", "statistics": "per-class statistics",
              "maps": "precomputing vulnerability maps", "tsne": "laying out the t-SNE maps",
              "publish": "writing the experiment"}
CANCEL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
_LOG_LINES = 200      # a job keeps its last messages (a scan of a huge folder may note thousands)
_KEEP_S = 24 * 3600   # how long the server remembers a finished job (its page shows the outcome)


@dataclass
class Job:
    """One prepare run. ``stage``/``done``/``total`` are the latest progress report (``done``/``total``
    items of ``stage``); ``finished`` is set last, after ``path`` or ``error``."""
    experiment: str
    cache_dir: str
    stage: str = "load"
    done: int = 0
    total: int = 0
    error: str | None = None
    path: str | None = None
    finished: bool = False
    cancelled: bool = False
    started: float = field(default_factory=time.time)
    ended: float | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=_LOG_LINES))
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    monitor: threading.Thread | None = field(default=None, repr=False, compare=False)
    spawned: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return not self.finished

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    @property
    def fraction(self) -> float:
        """Progress of the current stage in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    def describe(self) -> str:
        step = STAGES.index(self.stage) + 1 if self.stage in STAGES else 0
        what = STAGE_TEXT.get(self.stage, "working")
        count = f": {self.done:,} of {self.total:,}" if self.total else ""
        return f"Step {step} of {len(STAGES)}, {what}{count}"

    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has finished (True) or ``timeout`` seconds have passed (False)."""
        if self.monitor is not None:
            self.monitor.join(timeout)
        return self.finished


_JOBS: dict[tuple[str, str], Job] = {}
_LOCK = threading.Lock()


def _key(experiment_id: str, cache_dir) -> tuple[str, str]:
    return str(Path(cache_dir).resolve()), experiment_id


def get(experiment_id: str, cache_dir) -> Job | None:
    with _LOCK:
        return _JOBS.get(_key(experiment_id, cache_dir))


def running(cache_dir=None) -> list[Job]:
    """The jobs still running for this cache folder (any session's), or in the whole server (None)."""
    folder = None if cache_dir is None else str(Path(cache_dir).resolve())
    with _LOCK:
        return [j for (c, _), j in _JOBS.items() if j.running and folder in (None, c)]


def check_capacity() -> None:
    """A PrepareError if this server runs ``max_jobs`` jobs already (checked before any costly step)."""
    with _LOCK:
        busy = [j.experiment for j in _JOBS.values() if j.running]
    _refuse_if_full(busy)


def _refuse_if_full(busy: list[str]) -> None:
    limit = settings().max_jobs
    if len(busy) >= limit:
        raise PrepareError(
            f"this server prepares at most {limit} experiment(s) at once and is busy with "
            f"{', '.join(repr(b) for b in busy)}; wait for it to finish and press Prepare again (the "
            "server's administrator can raise max_jobs, NVE_MAX_JOBS)")


def start(cfg: ExperimentConfig, experiment_id: str, cache_dir, *, target: str = DEFAULT_TARGET) -> Job:
    """Start preparing ``experiment_id`` in a child process and return once it runs.

    ``target`` ("module:function", called like ``core.pipeline.prepare``) is what the child runs; tests
    name their own. A StoreError if the id is invalid, the experiment exists, or this server is preparing
    it now; a PrepareError if ``max_jobs`` jobs are running already."""
    validate_id(experiment_id)
    cache = Path(cache_dir).resolve()  # the child runs elsewhere (cwd = the repository)
    if (cache / experiment_id).exists():
        raise StoreError(f"experiment {experiment_id!r} already exists; choose another id")
    payload = json.dumps({"config": cfg.to_dict(), "experiment": experiment_id, "cache_dir": str(cache),
                          "target": target})
    with _LOCK:
        old = _JOBS.get(_key(experiment_id, cache))
        if old is not None and old.running:
            raise StoreError(f"experiment {experiment_id!r} is already being prepared (started "
                             f"{old.elapsed():.0f} s ago); wait for it to finish")
        _refuse_if_full([j.experiment for j in _JOBS.values() if j.running])
        for key in [k for k, j in _JOBS.items() if j.finished and time.time() - j.ended > _KEEP_S]:
            del _JOBS[key]  # a long-running server forgets old results
        job = Job(experiment_id, str(cache))
        job.monitor = threading.Thread(target=_run, args=(job, payload), daemon=True,
                                       name=f"prepare-{experiment_id}")
        _JOBS[_key(experiment_id, cache)] = job
        job.monitor.start()
    job.spawned.wait(60)
    return job


def cancel(job: Job) -> None:
    """Stop a running job (SIGTERM to its process group, SIGKILL to the group after ``CANCEL_GRACE_S``).
    Its finished work stays resumable. A job whose process is not started yet is stopped as it starts."""
    with job.lock:
        if job.finished:
            return
        job.cancelled = True
        proc = job.process
        if proc is None or proc.poll() is not None:  # not started (_run stops it), or already reaped
            return
        _signal_group(proc.pid, signal.SIGTERM)
    threading.Thread(target=_escalate, args=(job, proc.pid), daemon=True).start()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group has ended
        pass


def _escalate(job: Job, pgid: int) -> None:
    if job.monitor is not None:
        job.monitor.join(CANCEL_GRACE_S)
    _signal_group(pgid, signal.SIGKILL)  # also members that outlived their leader


def _run(job: Job, payload: str) -> None:
    """Start the child and follow it until it ends, in this thread: Linux stops the child when the
    *thread* that started it ends (``PR_SET_PDEATHSIG``), and this one lives exactly as long as the child.
    Whatever happens, the job ends finished, with a path or an error."""
    proc = None
    try:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        try:
            with job.lock:
                job.process = proc = subprocess.Popen(
                    [sys.executable, "-m", "core.jobs"], cwd=ROOT, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    env={**os.environ, "NVE_JOB_PARENT": str(os.getpid()), "PYTHONPATH": path})
        except OSError as e:
            job.error = f"the prepare process could not start ({e.strerror or e}); the server's log has more"
            log.exception("prepare job %r could not start", job.experiment)
            return
        finally:
            job.spawned.set()
        if job.cancelled:
            _signal_group(proc.pid, signal.SIGTERM)
        code, outcome = _follow(job, proc, payload)
        if outcome is not None and outcome.get("event") == "done" and code == 0:
            job.path = str(outcome.get("path"))
            job.cancelled = False
        elif outcome is not None and outcome.get("event") == "error":
            job.error = str(outcome.get("message"))
            job.cancelled = False  # it had failed before the cancel reached it
        elif job.cancelled:
            job.error = ("cancelled. What was finished is kept: press Prepare with the same id and "
                         "settings to resume")
        else:
            job.error = _died(code)
    except Exception:  # a bug here must not leave the job "running" for ever, holding its slot
        log.exception("following prepare job %r failed", job.experiment)
        if job.path is None and job.error is None:
            job.error = "the server lost track of this job; the server's log has the details"
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr) if proc is not None else ():
            try:
                pipe.close()
            except OSError:
                pass
        job.ended = time.time()
        job.finished = True


def _follow(job: Job, proc: subprocess.Popen, payload: str) -> tuple[int, dict | None]:
    """Feed the child its job, read its reports until it ends: (exit status, the last done/error)."""
    stderr: deque[str] = deque(maxlen=40)
    drain = threading.Thread(target=lambda: stderr.extend(
        line.decode("utf-8", "replace").rstrip() for line in proc.stderr), daemon=True)
    drain.start()
    outcome: dict | None = None
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
    except OSError:  # the child died at once; its exit status says how
        pass
    for raw in proc.stdout:
        try:
            msg = json.loads(raw)
            event = msg.get("event")
            if event == "progress":
                job.stage, job.done, job.total = str(msg["stage"]), int(msg["done"]), int(msg["total"])
            elif event == "log":
                job.log.append(str(msg["text"]))
            elif event in ("done", "error"):
                outcome = msg
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not a report (stray output): ignored
    code = proc.wait()
    drain.join(5)
    if stderr:
        log.warning("prepare job %r (pid %d, exit %s) wrote to stderr:\n%s", job.experiment, proc.pid, code,
                    "\n".join(stderr))
    return code, outcome


def _died(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGKILL": "killed, most likely because the server ran out of memory (try fewer or smaller "
                          "images, or a smaller batch size)",
               "SIGBUS": "stopped by a bus error, most likely a full disk"}.get(name, f"stopped by {name}")
    else:
        why = f"ended unexpectedly (exit status {code})"
    return (f"the prepare process was {why}. What was finished is kept: press Prepare with the same id "
            "and settings to resume; the server's log has the details")


# -- the child --------------------------------------------------------------------------------------------
_REPORTS = None  # the child's private copy of its stdout: only reports go there


def _emit(**msg) -> None:
    _REPORTS.write(json.dumps(msg) + "\n")
    _REPORTS.flush()


def _child() -> int:
    try:  # be the one the kernel kills first when memory runs out, not the server
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    _die_with_parent()
    global _REPORTS  # reports on a private copy of stdout; what anything else prints, even from C, goes
    _REPORTS = os.fdopen(os.dup(1), "w")  # to stderr (the server's log), never into the report stream
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    module, _, name = job["target"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()  # at most ~20 reports a second; every stage change and the end go out
        if now - last[0] > 0.05 or done >= total or done == 0:
            last[0] = now
            _emit(event="progress", stage=stage, done=int(done), total=int(total))

    try:
        cfg = ExperimentConfig.from_dict(job["config"])
        path = fn(cfg, job["experiment"], cache_dir=job["cache_dir"], progress=progress, show_bars=False,
                  log=lambda text: _emit(event="log", text=str(text)))
    except USER_ERRORS as e:
        _emit(event="error", message=str(e))
        return 2
    except MemoryError:
        _emit(event="error", message="the server ran out of memory preparing this experiment; try fewer or "
                                     "smaller images, or a smaller batch size")
        return 1
    except Exception as e:  # a bug or the machine: the user gets one sentence, the log the traceback
        import traceback
        traceback.print_exc()
        _emit(event="error", message=f"an unexpected error ({type(e).__name__}) stopped it; the server's "
                                     "log has the details. What was finished is kept: press Prepare again "
                                     "with the same id and settings to resume")
        return 1
    _emit(event="done", path=str(path))
    return 0


def _die_with_parent() -> None:
    """A job is the server's: when the server stops, its jobs stop too (Linux ``PR_SET_PDEATHSIG``, sent
    when the thread that started this process ends: ``_run``'s, which lives as long as the job)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get("NVE_JOB_PARENT", str(os.getppid())):
        sys.exit(1)  # the server died before the request took effect


if __name__ == "__main__":
    sys.exit(_child())
