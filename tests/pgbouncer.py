"""Debian's PgBouncer in transaction mode on loopback, in front of a PostgreSQL server: for the tests
(tests/conftest.py's ``pgbouncer_url``) and bench/store_load.py. A generated ini and user list in a
temporary folder; as root it runs as the postgres user (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

START_S = 20.0  # seconds PgBouncer gets to accept connections
POOL_SIZE = 5  # server connections PgBouncer opens per database and user, unless told otherwise
IDLE_TRANSACTION_S = 30.0  # seconds a client may sit idle inside a transaction before PgBouncer closes its server link


def missing() -> str | None:
    """Why PgBouncer cannot run here, or None."""
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        return "pgbouncer not installed (apt-get install -y pgbouncer; `make test` as root installs it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pgbouncer(server_url: str, pool_size: int = POOL_SIZE) -> Iterator[str]:
    """PgBouncer (``pool_mode = transaction``, at most ``pool_size`` server connections per database and user)
    in front of the server of ``server_url`` (trust authentication, as the test server's); yields ``server_url``
    pointed at it. Stopped and its folder deleted afterwards."""
    url = sa.engine.make_url(server_url)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="kdbench-pgbouncer-"))
    user = url.username or "postgres"
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={url.host or '127.0.0.1'} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder}/userlist.txt\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n"
        f"idle_transaction_timeout = {IDLE_TRANSACTION_S:g}\nadmin_users = {user}\nlogfile = {folder}/pgbouncer.log\n")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    cmd = [binary, "--quiet", str(folder / "pgbouncer.ini")]  # --quiet: its log goes to the logfile only
    if os.geteuid() == 0:
        folder.chmod(0o755)
        shutil.chown(folder, "postgres")
        cmd += ["-u", "postgres"]
    # its stderr goes to a file, never to a pipe nobody reads: PgBouncer logs every client login there too (with
    # kdbench's pool-less engines, every transaction is one), and once the pipe's 64 KiB were full it blocked in
    # that write, every client and server connection with it: the stall earlier runs took for a pooling problem
    err = (folder / "stderr.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError(f"pgbouncer did not start: {(folder / 'stderr.log').read_text()}"
                                       f"{log.read_text() if log.exists() else ''}") from None
                time.sleep(0.05)
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
