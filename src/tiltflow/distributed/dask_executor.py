"""A Dask executor for per-item tasks: a ``LocalCluster``, an existing scheduler, or a SLURM cluster
started with dask-jobqueue from a YAML config.

Workers read inputs from the shared filesystem and return small results; only the coordinator
writes the project. Tasks are retried on a lost worker (``retries``). Torch threads per worker are
capped so workers do not oversubscribe the cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tiltflow.workflow.tasks import ItemResult, ItemTask

if TYPE_CHECKING:
    from tiltflow.workflow.run_options import RunOptions

T = TypeVar("T", bound=ItemTask)
R = TypeVar("R", bound=ItemResult)


def _limit_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _run_task(fn: Callable[[T], R], task: T, torch_threads: int) -> R:
    _limit_threads(torch_threads)
    return fn(task)


class DaskExecutor:
    def __init__(self, client: Any, *, owns_cluster: bool = False, retries: int = 2, torch_threads: int = 1):
        self.client = client
        self.owns_cluster = owns_cluster
        self.retries = retries
        self.torch_threads = torch_threads

    @classmethod
    def from_options(cls, options: RunOptions) -> DaskExecutor:
        from dask.distributed import Client, LocalCluster

        threads = int(options.threads_per_worker or 1)
        if options.scheduler:
            return cls(Client(options.scheduler), torch_threads=threads)
        if options.jobqueue:
            return cls(
                Client(slurm_cluster_from_config(Path(options.jobqueue))), owns_cluster=True, torch_threads=threads
            )
        resources = {"GPU": int(options.gpus_per_worker)} if options.gpus_per_worker else None
        cluster = LocalCluster(
            n_workers=int(options.workers or 2),
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            resources=resources,
        )
        return cls(Client(cluster), owns_cluster=True, torch_threads=threads)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[str, R | BaseException]]:
        """Submit ``fn(task)`` per task (the task pickled to a worker); yield ``(task.key, result or
        exception)`` as they finish."""
        from dask.distributed import as_completed

        futures = {}
        for task in tasks:
            fut = self.client.submit(
                _run_task,
                fn,
                task,
                self.torch_threads,
                key=f"tiltflow-{task.key}-{id(fn)}",
                retries=self.retries,
                pure=False,
            )
            futures[fut] = task.key
        for fut in as_completed(list(futures)):
            key = futures[fut]
            value: R | BaseException
            try:
                value = fut.result()
            except Exception as err:  # reported per item by the caller
                value = err
            yield key, value

    def close(self) -> None:
        if self.owns_cluster:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()


def slurm_cluster_from_config(path: Path) -> Any:
    """A dask-jobqueue ``SLURMCluster`` from a YAML file (keys as SLURMCluster's arguments, plus
    ``jobs: N`` to scale to)."""
    import yaml  # dask depends on pyyaml
    from dask_jobqueue import SLURMCluster

    config = yaml.safe_load(path.read_text()) or {}
    jobs = int(config.pop("jobs", 1))
    cluster = SLURMCluster(**config)
    cluster.scale(jobs=jobs)
    return cluster
