"""On a real dask.distributed cluster of worker processes, including a worker killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import dask
import distributed
import pytest
import xarray as xr

import pytyche as pt

SEGMENTS = {
    0: "device == 'mobile'",
    1: "device == 'desktop' and age > 40",
    2: "device == 'tablet'",
    3: "everyone",
}


@pytest.fixture(scope="module")
def client():
    # A dashboard on a free port (":0"), so another cluster on this machine cannot collide;
    # closes with a deadline, so a cluster that lost a worker cannot hang the test session.
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=60)


def lazy_posterior(delay: float = 0.0):
    """A posterior generated block by block on the workers; nothing is shipped from here."""
    result = pt.example_posterior(
        n_visitors=6_000, n_draws=60, arms=("control", "A", "B"), chunks=500, seed=11
    )
    if delay:
        ds = result.dataset
        slowed = {
            name: ds[name].copy(data=ds[name].data.map_blocks(lambda x: (time.sleep(delay), x)[1]))
            for name in ds.data_vars
        }
        result = pt.posterior(ds.assign(slowed))
    return result


def test_allocation_on_a_process_cluster_equals_the_local_one(client):
    local = pt.thompson_allocation(lazy_posterior(), SEGMENTS)
    with dask.config.set(scheduler=client):
        on_cluster = pt.thompson_allocation(lazy_posterior(), SEGMENTS)
        means = pt.segment_means(lazy_posterior(), SEGMENTS).compute()
    assert on_cluster == local
    assert means.sizes["segment"] == 4


def test_a_posterior_written_from_the_cluster_equals_one_written_locally(client, tmp_path):
    local = pt.to_zarr(lazy_posterior(), tmp_path / "local.zarr")
    with client.as_current(), dask.config.set(scheduler="dask.distributed"):
        on_cluster = pt.to_zarr(lazy_posterior(), tmp_path / "cluster.zarr")
    xr.testing.assert_identical(
        pt.open_posterior(on_cluster).dataset.load(), pt.open_posterior(local).dataset.load()
    )


def test_a_worker_killed_mid_computation_does_not_change_the_result(client):
    expected = pt.thompson_allocation(lazy_posterior(), SEGMENTS)
    outcome = {}

    def allocate():
        # The client by name, not the Client object in the global dask config: a nanny pickles
        # that config to restart the killed worker, and distributed 2025.7 cannot pickle a Client.
        with client.as_current(), dask.config.set(scheduler="dask.distributed"):
            outcome["allocation"] = pt.thompson_allocation(lazy_posterior(delay=0.05), SEGMENTS)

    runner = threading.Thread(target=allocate)
    runner.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        busy = [w for w, tasks in client.processing().items() if tasks]
        victim = busy[0] if busy else None
        time.sleep(0.05)
    assert victim is not None, "the computation never reached a worker"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert victim not in client.scheduler_info()["workers"]
    assert outcome["allocation"] == expected
    # The nanny restarts the killed worker: the cluster heals, and is whole again before it closes.
    client.wait_for_workers(2, timeout=60)
