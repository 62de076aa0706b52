"""Per-file tasks in order, or in parallel on Dask through prefect-dask's ``DaskTaskRunner``.

The flow opens the task runner itself, from its config, rather than through
``flow.with_options(task_runner=...)``: a deployment's flow run loads the flow from its entrypoint, so
options set by the process that created the deployment would be lost there. The same config therefore
gives the same execution from the CLI, from Python and from a served or deployed flow.
"""

from __future__ import annotations

from typing import Any

from prefect import Task

from flows.config import DaskOptions


def dask_task_runner(options: DaskOptions) -> Any:
    """A ``DaskTaskRunner`` for ``options`` (an existing cluster, or a LocalCluster), or None for in order."""
    if not options.parallel():
        return None
    from prefect_dask import DaskTaskRunner  # imports dask.distributed: only when asked for

    if options.dask_address is not None:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": options.dask_workers,
            "threads_per_worker": 1,
            "processes": options.dask_processes,
            "dashboard_address": None,
        }
    )


def run_each(task: Task[..., Any], calls: list[dict[str, Any]], options: DaskOptions) -> list[Any]:
    """``task(**kwargs)`` for each of ``calls``; each result, or the exception its task raised, in the order
    of ``calls`` (one failing input does not stop the others).

    In order in this process, or submitted all at once to the Dask cluster of ``options``. Call it
    inside a flow.
    """
    runner = dask_task_runner(options)
    if runner is None or not calls:
        states = [task(**kwargs, return_state=True) for kwargs in calls]
        return [s.result(raise_on_failure=False) for s in states]
    with runner:
        futures = [runner.submit(task, kwargs) for kwargs in calls]
        for f in futures:
            f.wait()
        return [f.state.result(raise_on_failure=False) for f in futures]
