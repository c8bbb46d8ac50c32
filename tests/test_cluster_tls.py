"""Issue 22, item 4: the study's LocalCluster speaks TLS with credentials of its own, so no other
process (not even one of the same user) can submit code to it; the dashboard stays local."""

from __future__ import annotations

import copy
import operator
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NO_PORT_8787, SMALL_STUDY, make_config
from distributed.security import Security

from pipeline.config import ConfigError, RuntimeConfig
from pipeline.runtime.execute.dask.cluster import make_client


def runtime_config(tmp_path: Path, **runtime: object) -> RuntimeConfig:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(tmp_path), "dashboard_port": 0, **runtime})
    return make_config(d).runtime


# a client that tries the scheduler, in a process of its own: a Client whose connection was
# refused can deadlock when the garbage collector closes it later (distributed's loop-runner
# lock; it hung the suite once), so the attempt must not live in the test process
TRY_CLIENT = """
import os, sys
from distributed import Client
from distributed.security import Security
security = Security.temporary() if sys.argv[2] == "other-ca" else None
with Client(sys.argv[1], security=security, timeout="3s") as client:
    client.submit(os.getuid).result(timeout=3)
print("ran")
"""


def refused(address: str, credentials: str = "none") -> bool:
    """True when a client at `address` (no credentials, or those of `other-ca`) cannot run a
    task."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", TRY_CLIENT, address, credentials],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:  # hung at the handshake: it ran nothing
        return True
    return "ran" not in done.stdout


def _in_process_cluster(protocol: str, **options: object):
    """A one-worker cluster inside this process on 127.0.0.1 (no dashboard)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol=protocol,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs=NO_PORT_8787,
        **options,
    )


def test_a_client_without_the_studys_credentials_cannot_submit(tmp_path: Path) -> None:
    """Before issue 22 `Client(addr).submit(os.getuid)` from any local process returned 0."""
    with make_client(1, 1024, runtime_config(tmp_path)) as handle:
        address = handle.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert handle.client.submit(operator.add, 1, 2).result() == 3  # the study's own client
        assert refused(address)  # no credentials
        assert refused(address.replace("tls://", "tcp://"))  # plain TCP to the same port
        assert refused(address, "other-ca")  # credentials of another CA
        assert handle.dashboard is None or "127.0.0.1" in handle.dashboard
    # the check itself sees a task run where nothing guards the scheduler
    with _in_process_cluster("tcp://") as open_cluster:
        assert not refused(open_cluster.scheduler_address)


def test_an_existing_tls_cluster_is_joined_with_the_runtime_tls_files(tmp_path: Path) -> None:
    security = Security.temporary()
    files = {}
    for key, attr in (
        ("ca", "tls_ca_file"),
        ("cert", "tls_client_cert"),
        ("key", "tls_client_key"),
    ):
        files[key] = tmp_path / f"{key}.pem"
        files[key].write_text(getattr(security, attr))  # the PEM text itself
    with _in_process_cluster("tls://", security=security) as cluster:
        runtime = runtime_config(
            tmp_path,
            scheduler_address=cluster.scheduler_address,
            tls_ca_file=str(files["ca"]),
            tls_cert_file=str(files["cert"]),
            tls_key_file=str(files["key"]),
        )
        with make_client(1, 1024, runtime) as handle:
            assert handle.client.submit(operator.add, 1, 2).result() == 3
        assert refused(cluster.scheduler_address)


def test_tls_files_for_an_existing_cluster_must_exist(tmp_path: Path) -> None:
    runtime = runtime_config(
        tmp_path,
        scheduler_address="tls://127.0.0.1:1",
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_cert_file=str(tmp_path / "cert.pem"),
        tls_key_file=str(tmp_path / "key.pem"),
    )
    with pytest.raises(ConfigError, match=r"runtime\.tls_ca_file"), make_client(1, 1024, runtime):
        pass
    with pytest.raises(ConfigError, match="tls_key_file"):
        runtime_config(tmp_path, tls_cert_file=str(tmp_path / "cert.pem"))
