"""Distributed prepare on Ray: ``python -m core prepare ... --ray [ADDRESS]``.

This process (the driver) does what ``prepare`` always does: it scans the dataset, decides which images
are attacked and which pairs are kept, writes the one store, records progress and resumes an
interrupted run. Only the chunks of the four heavy stages (clean predictions, attack, features,
precomputed vulnerability maps) go to Ray actors. Each actor builds the same ``core.pipeline.Context``
from the experiment's config, computes the chunks it is sent and returns their arrays through Ray's
object store; the driver consumes the results in chunk order, so the store is the one a single-process
prepare writes (the same chunks, the same per-chunk attack seeds; ``tests/core/test_distributed.py``
compares every array).

Workers (``RayRunner``): one per GPU when the cluster has GPUs (each actor holds one, and the device
``auto`` picks it), else one per ``cpus_per_worker`` CPUs, running torch on that many threads. At most
``IN_FLIGHT`` chunks per worker are queued, so the driver never holds more than a few chunks' arrays.

On a real cluster: start Ray on every machine (``ray start --head`` on one, ``ray start
--address=HEAD:6379`` on the others), with this project and its dependencies installed at the same
path and the dataset folder and checkpoint readable at the same paths on every machine (a shared
filesystem, or identical copies); then on the head ``python -m core prepare --preset NAME --ray auto``
(or ``--ray ray://HEAD:10001`` from outside the cluster). The store is written on the driver's machine.
``--ray`` with no address starts a local Ray instance on this machine.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from core.config import ExperimentConfig

if TYPE_CHECKING:
    from core.pipeline import Task

IN_FLIGHT = 2


class _Worker:
    """A Ray actor: a ``Context`` built once, then one chunk per call."""

    def __init__(self, cfg: dict, threads: int):
        import torch

        from core.pipeline import Context
        torch.set_num_threads(max(1, threads))
        self.ctx = Context.build(ExperimentConfig.from_dict(cfg))

    def run(self, task: Task) -> Any:
        return self.ctx.run(task)


class RayRunner:
    """A ``core.pipeline.Runner`` over Ray actors (see the module notes): each ``core.pipeline.Task`` is
    sent (pickled) to an actor, whose ``Context`` runs it."""

    def __init__(self, cfg: ExperimentConfig, address: str | None = None, *, workers: int | None = None,
                 cpus_per_worker: int = 1, log=lambda s: None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs the ray package: pip install 'ray>=2.9' (or the project's "
                               "[ray] extra)") from None
        if not ray.is_initialized():
            ray.init(address=address or None, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                         filter(None, [_project_root(), os.environ.get("PYTHONPATH")]))}})
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if workers is None:
            workers = gpus if gpus else max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=1 if gpus else 0)(_Worker)
        self.workers = int(workers)
        self._actors = [actor.remote(cfg.to_dict(), cpus_per_worker) for _ in range(self.workers)]
        log(f"Ray: {self.workers} worker(s) ({'1 GPU' if gpus else f'{cpus_per_worker} CPU(s)'} each) on "
            f"a cluster of {resources.get('CPU', 0):.0f} CPUs and {gpus} GPUs")

    def __call__(self, tasks: Iterable[Task]) -> Iterator[Any]:
        """Results of ``tasks`` in their order; chunk i goes to worker i mod workers."""
        import ray
        pending: deque = deque()
        for i, task in enumerate(tasks):
            pending.append(self._actors[i % self.workers].run.remote(task))
            if len(pending) >= IN_FLIGHT * self.workers:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def close(self) -> None:
        import ray
        for a in self._actors:
            ray.kill(a)
        self._actors = []


def _project_root() -> str:
    """So that actors import this checkout's ``core`` (workers start in another directory)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
