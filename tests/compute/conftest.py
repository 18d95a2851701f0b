"""One real local Ray cluster for the compute tests (`ray start --head`, token auth, 256 MB object store),
started once per session: defined here only, so every module shares it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from alignment_dagster.compute.local_ray import LocalRay, local_ray_cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRay]:
    with local_ray_cluster(num_cpus=2, object_store_mb=256) as cluster:
        before = {k: os.environ.get(k) for k in cluster.env}
        os.environ.update(cluster.env)  # this process submits jobs: it needs the token too
        try:
            yield cluster
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
