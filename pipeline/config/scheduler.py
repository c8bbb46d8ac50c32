"""`runtime.scheduler_address`: its form (checked with the config) and whether a scheduler
answers there (checked before a run writes anything).

Without these checks a typo or a stopped cluster surfaced after prepare, as Dask's traceback
a minute later (its connect timeout, then its close timeout), with exit code 1.
"""

from __future__ import annotations

import socket
import time

from pipeline.config.structured import ConfigError

KEY = "runtime.scheduler_address"
# Dask's schemes that a TCP connect can test; inproc:// and ucx:// are taken as they are
TCP_SCHEMES = ("tcp", "tls", "ws", "wss")
SCHEMES = (*TCP_SCHEMES, "inproc", "ucx")
CONNECT_TIMEOUT_S = 10.0  # the whole check, refused connects retried within it
REFUSED_RETRY_S = 0.5


def parse_address(address: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `tcp://host:port` (the scheme defaults to tcp, as in Dask).

    Raises ConfigError naming the key, the form expected and the value given."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    expected = "an address like tcp://10.0.0.5:8786 (scheme tcp or tls, a host and a port)"
    if scheme not in SCHEMES:
        raise ConfigError(KEY, expected, address)
    if scheme not in TCP_SCHEMES:
        return scheme, rest, None
    host, colon, port_text = rest.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal: tcp://[::1]:8786
    if not colon or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(KEY, expected, address)
    return scheme, host, int(port_text)


def check_reachable(address: str, timeout: float | None = None) -> None:
    """ConfigError (exit 2) unless a Dask scheduler answers at `address`.

    A TCP connect alone proves little (a firewall or proxy may accept any connection), so on
    plain tcp:// the first bytes are awaited too: a Dask scheduler sends its handshake as soon
    as it accepts (it logs the probe as a connection closed before the handshake completed).
    A TLS scheduler waits for the client to speak first: there, the connect is the test.
    """
    scheme, host, port = parse_address(address)
    if port is None:
        return
    wait = CONNECT_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + wait
    while True:
        try:
            left = max(deadline - time.monotonic(), 0.1)
            with socket.create_connection((host, port), timeout=left) as connection:
                if scheme == "tcp" and not connection.recv(1):
                    raise ConnectionResetError(0, "closed without a word")
                return
        except ConnectionRefusedError:
            # a scheduler started just before the run may not listen yet: Dask's client
            # retries a refused connect too, so retry until the deadline
            if time.monotonic() + REFUSED_RETRY_S < deadline:
                time.sleep(REFUSED_RETRY_S)
                continue
            reason = "Connection refused"
        except OSError as error:
            reason = (
                "no answer" if isinstance(error, TimeoutError) else error.strerror or str(error)
            )
        raise ConfigError(
            KEY,
            "the address of a running Dask scheduler (start it first: `dask scheduler`; or "
            "null for a local cluster)",
            f"{address}: {reason}",
        )
