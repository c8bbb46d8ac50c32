"""The study's dashboard port taken between the driver's check and the scheduler's bind (another
study starting at the same moment): the run takes a free port quietly, as it does when the
check sees the port taken, instead of Dask's "Port N is already in use" warning."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
from test_cluster_tls import runtime_config

import pipeline.runtime.execute.dask.cluster as cluster


def test_a_port_taken_after_the_check_is_replaced_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # the race, made certain: the check says free, the bind finds it taken
        monkeypatch.setattr(cluster, "port_is_free", lambda host, port: True)
        runtime = runtime_config(tmp_path, dashboard_port=taken)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with cluster.make_client(1, 1024, runtime) as handle:
                link = handle.dashboard
    assert not [w for w in caught if "already in use" in str(w.message)]
    assert link is not None and "127.0.0.1" in link and f":{taken}/" not in link
