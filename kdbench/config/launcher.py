"""``launcher:``: how ``kdbench sweep --launcher slurm|ray`` starts its workers. Where the work runs, not what is
computed: neither hashed nor stored (as ``log:``), and every key has a flag of the same meaning that wins over it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kdbench.config.base import Strict

__all__ = ["LAUNCHER_NAMES", "LauncherConfig"]

LAUNCHER_NAMES = ("local", "slurm", "ray")  # the registry's records: kdbench.launch.LAUNCHERS


class LauncherConfig(Strict):
    """How the workers of ``kdbench sweep --workers N`` are started (see docs/cluster.md)."""

    name: Literal["local", "slurm", "ray"] = "local"
    """``local``: processes on this machine; ``slurm``: one job-array task per worker through submitit; ``ray``: one
    Ray task per worker. Flag: ``--launcher``."""
    gpus_per_worker: Annotated[int, Field(ge=0)] = 0
    """GPUs each worker holds (slurm: ``--gpus-per-node``; ray: ``num_gpus``). Flag: ``--gpus-per-worker``."""
    cpus_per_worker: Annotated[int, Field(ge=1)] = 1
    """CPU cores each worker holds (slurm: ``--cpus-per-task``; ray: ``num_cpus``); torch threads follow it."""
    partition: str | None = None
    """slurm: the partition (``--partition``); default the cluster's. Flag: ``--partition``."""
    time_min: Annotated[int, Field(ge=1)] = 240
    """slurm: each task's time limit, minutes (``--time``); a task that reaches it is requeued and resumes. Flag:
    ``--time-min``."""
    sbatch: dict[str, str] = Field(default_factory=dict)
    """slurm: further ``#SBATCH`` options, e.g. ``{account: lab, qos: high}`` (submitit's
    ``slurm_additional_parameters``). Flag: ``--sbatch KEY=VALUE`` (repeatable)."""
    ray_address: str | None = None
    """ray: the cluster to join (``ray.init(address=...)``, e.g. ``auto`` or ``ray://head:10001``); default a
    cluster started on this machine for the sweep. Flag: ``--ray-address``."""
    logs: str | None = None
    """slurm: the folder of submitit's job files and logs; default ``<cache dir>/submitit/<study>``."""
