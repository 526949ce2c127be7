"""A Dask executor for per-item tasks: a ``LocalCluster``, an existing scheduler, or a SLURM cluster
started with dask-jobqueue from a YAML config.

Workers read inputs from the shared filesystem and return small results; only the coordinator
writes the project. Tasks are retried on a lost worker (``retries``). Torch threads per worker are
capped so workers do not oversubscribe the cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def _limit_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _run_task(fn: Callable[..., Any], args: tuple, torch_threads: int) -> Any:
    _limit_threads(torch_threads)
    return fn(*args)


class DaskExecutor:
    def __init__(self, client: Any, *, owns_cluster: bool = False, retries: int = 2, torch_threads: int = 1):
        self.client = client
        self.owns_cluster = owns_cluster
        self.retries = retries
        self.torch_threads = torch_threads

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DaskExecutor:
        from dask.distributed import Client, LocalCluster

        threads = int(options.get("threads_per_worker") or 1)
        if options.get("scheduler"):
            return cls(Client(options["scheduler"]), torch_threads=threads)
        if options.get("jobqueue"):
            return cls(
                Client(slurm_cluster_from_config(Path(options["jobqueue"]))), owns_cluster=True, torch_threads=threads
            )
        resources = {"GPU": int(options["gpus_per_worker"])} if options.get("gpus_per_worker") else None
        cluster = LocalCluster(
            n_workers=int(options.get("workers") or 2),
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            resources=resources,
        )
        return cls(Client(cluster), owns_cluster=True, torch_threads=threads)

    def map_unordered(self, fn: Callable[..., Any], tasks: Iterable[tuple[str, tuple]]) -> Iterator[tuple[str, Any]]:
        from dask.distributed import as_completed

        futures = {}
        for key, args in tasks:
            fut = self.client.submit(
                _run_task,
                fn,
                args,
                self.torch_threads,
                key=f"tiltflow-{key}-{id(fn)}",
                retries=self.retries,
                pure=False,
            )
            futures[fut] = key
        for fut in as_completed(list(futures)):
            key = futures[fut]
            try:
                yield key, fut.result()
            except Exception as err:
                yield key, err

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
