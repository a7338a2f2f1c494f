"""Optuna's gRPC storage proxy: one process holds the Optuna storage, hundreds of workers call it.

``kdbench storage-proxy --storage URL --port P`` runs :func:`serve`: Optuna's own server
(:func:`optuna.storages.run_grpc_proxy_server`) in front of the study database's Optuna storage, built as every
other one is (:meth:`kdbench.store.db.Database.optuna_storage`) and wrapped in Optuna's process cache, as Optuna
asks for a proxy. Its thread pool bounds the database connections Optuna's calls open (one per call in flight).
A worker given ``--optuna-proxy host:P`` gets :func:`connect` (Optuna's ``GrpcStorageProxy``) as its Optuna
storage, while kdbench's own tables stay on its ``--storage``; both must name the same database.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kdbench.defaults import PROXY_CONNECT_S, PROXY_THREADS
from kdbench.errors import StoreError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, GrpcStorageProxy

    from kdbench.store.db import Database

__all__ = ["connect", "parse_address", "serve"]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as (host, port).

    Raises:
        StoreError: no port, or a port that is not a number from 1 to 65535.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StoreError(f"--optuna-proxy {address!r}: not host:port; give where `kdbench storage-proxy` "
                         "listens, e.g. --optuna-proxy node1:13000")
    return host.strip("[]"), int(port)


def _need_grpc(option: str) -> None:
    """Refuse in one line where gRPC is not installed (Optuna imports it lazily, at the first call)."""
    if importlib.util.find_spec("grpc") is None:
        raise StoreError(f"{option}: Optuna's storage proxy needs gRPC, which is not installed; "
                         "pip install 'kdbench[proxy]'")


@contextmanager
def _experimental_quiet() -> Iterator[None]:
    """Optuna marks the proxy experimental (since 4.2) and warns at each use: once in the docs is enough."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def connect(address: str, timeout_s: float = PROXY_CONNECT_S) -> GrpcStorageProxy:
    """A client of the proxy at ``address``, once it answers (waited for up to ``timeout_s`` seconds).

    Raises:
        StoreError: bad address, or nothing answers there in time.
    """
    from optuna.storages import GrpcStorageProxy

    host, port = parse_address(address)
    _need_grpc(f"--optuna-proxy {address}")
    with _experimental_quiet():
        proxy = GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=timeout_s)
    except ConnectionError:
        proxy.close()
        raise StoreError(f"--optuna-proxy {address}: no Optuna storage proxy answers there within {timeout_s:g} s; "
                         "start it (kdbench storage-proxy --storage URL --port PORT) or fix the address") from None
    return proxy


def _stop(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def serve(store: Database, host: str, port: int, *, threads: int = PROXY_THREADS,
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve ``store``'s Optuna storage at ``host:port`` until Ctrl-C or SIGTERM, then stop cleanly: the calls
    in flight finish (their database transactions are never cut in half) and the function returns.

    Args:
        store: the study database (its Optuna storage is what the proxy serves).
        host: the interface to listen on (``0.0.0.0``: every one).
        port: the TCP port.
        threads: Optuna calls served at once, hence the most database connections the proxy opens.
        on_ready: called just before the server starts (the CLI prints where it listens).

    Raises:
        StoreError: the port is taken or the host is not an interface of this machine.
    """
    import optuna

    _need_grpc("kdbench storage-proxy")
    try:  # gRPC would share a port another process holds (SO_REUSEPORT) or log its refusal on stderr: ask first
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise StoreError(f"--host {host} --port {port}: the proxy cannot listen there ({exc.strerror}); choose a "
                         "free port or an address of this machine") from None
    storage: BaseStorage = optuna.storages.get_storage(store.optuna_storage())  # with Optuna's process cache
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="optuna-proxy")
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if on_ready is not None:
            on_ready()
        with _experimental_quiet():
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port, thread_pool=pool)
    except RuntimeError:  # grpc: "Failed to bind to address" (taken since the check)
        raise StoreError(f"--host {host} --port {port}: the proxy cannot listen there; choose a free port or an "
                         "address of this machine") from None
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True)  # the calls in flight end their transactions
