"""One database connection: a URL becomes an engine, kdbench's tables and an Optuna storage, once.

:class:`Database` is the base of :class:`kdbench.store.Store`: it opens the database (creating
kdbench's tables, checking the schema version), hands out transactions, and builds Optuna's
``RDBStorage`` on the same database from the real URL. Messages only ever show the URL with its
password masked (:func:`shown_url`).

The module runs past 400 lines because opening is where every damaged or foreign database must be refused in
one line (another application's tables, a missing version row, a newer schema, a read-only file, a full
server), and those checks belong with the connection they guard.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from kdbench.defaults import DEFAULT_STORAGE
from kdbench.errors import StoreError, first_line
from kdbench.store.schema import SCHEMA_VERSION, Base, Gaps, MetaRow, schema_gaps, upgrade

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

__all__ = ["Database", "make_engine", "retry_schema_race", "shown_url", "writable_file"]

SQLITE_BUSY_TIMEOUT_S = 60.0  # seconds a writer waits for the lock before failing
CONNECT_RETRY_S = 120.0  # seconds a server's "too many connections" is retried (with backoff) before failing
# the server's words when its connection slots are full (PostgreSQL: max_connections, a role's CONNECTION LIMIT)
_FULL = ("too many clients", "too many connections", "remaining connection slots")
SCHEMA_RETRY_S = 0.2  # seconds before retrying a table creation that raced another worker (times the attempt)
OPTUNA_VERSION_TABLE = "version_info"  # one of Optuna's tables: its presence says Optuna wrote here
# Optuna's RDB tables (optuna.storages._rdb.models; tests/test_store.py checks the list against it) and
# alembic's: a database holding only these and kdbench's is one kdbench may write to
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_system_attributes", "study_user_attributes", "trial_heartbeats",
    "trial_intermediate_values", "trial_params", "trial_system_attributes", "trial_user_attributes", "trial_values",
    "trials", "version_info", "alembic_version"})
T = TypeVar("T")


def shown_url(url: str) -> str:
    """``url`` as it may appear in messages and logs: its password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    _wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _wal(cur: Any) -> None:
    """Put the file in WAL mode (it stays so). Workers opening a new file together race to switch it, and the
    losers are told "database is locked" at once (SQLite's busy timeout does not wait for a journal-mode
    change): they try again, up to :data:`SQLITE_BUSY_TIMEOUT_S`."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + 0.05 * random.random())


def _sqlite_sync(dbapi_conn: Any, _record: Any) -> None:
    # WAL with synchronous=NORMAL: a commit is not fsynced, so a write costs microseconds rather than a
    # disk flush; the database stays consistent through any crash, and a killed process loses nothing it
    # committed; only a power cut or OS crash may roll back the last commits (sqlite.org/pragma.html#pragma_synchronous)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _is_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it: Optuna wraps the driver's error) says the server's slots are full."""
    for _ in range(5):
        if exc is None:
            return False
        if any(words in str(exc) for words in _FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _patiently(make: Callable[[], T]) -> T:
    """``make()``, again (jittered exponential backoff, up to :data:`CONNECT_RETRY_S`) while the server says
    it is full: for each new connection (:func:`patient`) and for Optuna's storage, which connects as it is
    built, before its engine can be hooked."""
    deadline = time.monotonic() + CONNECT_RETRY_S
    wait = 0.05
    while True:
        try:
            return make()
        except Exception as exc:
            if not _is_full(exc) or time.monotonic() > deadline:
                raise
            time.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, 2.0)


def _connect_patiently(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """A ``do_connect`` hook: open a server connection, waiting while the server's slots are all taken."""
    return _patiently(lambda: dialect.connect(*cargs, **cparams))


def server_engine_kwargs(url: str) -> dict[str, Any]:
    """How kdbench and Optuna connect to a database server (PostgreSQL, MySQL): no pool. A connection is
    opened for each transaction and closed after it, so a worker holds one only while it writes or reads
    (a trial's dozen short transactions), and hundreds of workers fit a server's default 100 slots; a
    server that is full anyway is waited for (:data:`CONNECT_RETRY_S`). psycopg 3 prepares no statements:
    a connection lives one transaction (nothing to reuse), and a pooler in transaction mode (PgBouncer before
    1.21) would hand a prepared name to another client's server connection."""
    psycopg = sa.engine.make_url(url).get_driver_name() == "psycopg"
    return {"poolclass": NullPool, **({"connect_args": {"prepare_threshold": None}} if psycopg else {})}


def patient(engine: Engine) -> Engine:
    """``engine``, whose new connections wait while the server is full (a ``do_connect`` hook)."""
    if engine.url.get_backend_name() != "sqlite":
        event.listen(engine, "do_connect", _connect_patiently)
    return engine


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite engine's database (None: another backend, or SQLite in memory)."""
    db = engine.url.database
    return Path(db) if engine.url.get_backend_name() == "sqlite" and db not in (None, "", ":memory:") else None


def _read_only_sqlite(url: str) -> Engine:
    """An engine that opens an existing SQLite file read-only (``mode=ro``): for a file, or a folder, this
    process may not write (a read-only mount, another user's results). A database in WAL mode needs its
    ``-shm`` file, which a reader cannot create there: then it is opened ``immutable`` (no locking, read as
    it lies; nothing can be writing to a file nobody may write)."""
    uri = f"{Path(sa.engine.make_url(url).database or '').resolve().as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)

    try:
        with contextlib.closing(connect()) as probe:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.OperationalError:
        uri += "&immutable=1"
    return sa.create_engine(url, creator=connect)


def writable_file(path: Path) -> bool:
    """Whether this process may write the file ``path`` and create files beside it (SQLite's journals)."""
    return os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode (commits not fsynced), a busy timeout and foreign keys.

    ``read_only`` (an existing SQLite file that may not be written): opened ``mode=ro``, no pragma written.

    Raises:
        StoreError: not a URL SQLAlchemy can use (or its driver is not installed).
    """
    try:
        if url.startswith("sqlite") and read_only:
            engine = _read_only_sqlite(url)
        elif url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "connect", _sqlite_sync)
        else:
            engine = patient(sa.create_engine(url, **server_engine_kwargs(url)))
    except (sa.exc.ArgumentError, ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(
            f"--storage {shown_url(url)!r}: not a usable SQLAlchemy URL ({exc}); use e.g. sqlite:///kdbench.db "
            "or postgresql+psycopg://user@host/db (pip install 'kdbench[postgres]')"
        ) from None
    return engine


def _schema_version(value: str | None, shown: str) -> int | None:
    """The schema version stored in ``kdbench_meta`` (None: no version row yet).

    Raises:
        StoreError: the row holds something that is not a number (a damaged database).
    """
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StoreError(
            f"--storage {shown}: a damaged kdbench database: its schema version (kdbench_meta.schema_version) is "
            f"{value[:40]!r}, not a number; restore it from a backup or, if this kdbench or an older one wrote it, "
            f"repair the row (UPDATE kdbench_meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'; "
            "kdbench then adds what an older schema lacks)") from None


def retry_schema_race(create: Callable[[], T], attempts: int = 5) -> T:
    """Call ``create`` (which creates tables and rows if missing), again if it lost a race with another
    worker creating the same ones at the same moment.

    ``create_all`` checks, then creates: two workers starting together on a new database both see no
    table, and the slower one fails (SQLite: "table ... already exists"; PostgreSQL: a unique violation
    in its catalog, or on a version row). By the next try the tables are there.
    """
    for attempt in range(attempts):
        try:
            return create()
        except DBAPIError as exc:
            raced = isinstance(exc, IntegrityError) or "already exists" in str(exc) or "duplicate column" in str(exc)
            if attempt == attempts - 1 or not raced:
                raise
            time.sleep(SCHEMA_RETRY_S * (attempt + 1))
    raise AssertionError("unreachable")


class Database:
    """A connected results database. Create with :meth:`open` (or :meth:`get`)."""

    def __init__(self, url: str, engine: Engine, *, ready: bool = True, read_only: bool = False,
                 optuna_proxy: str | None = None) -> None:
        self.url = shown_url(url)  # for messages; the engine holds the real one
        self.engine = engine
        self.read_only = read_only  # a SQLite file opened mode=ro: every write is refused
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._optuna: BaseStorage | None = None
        self.optuna_proxy = optuna_proxy  # host:port of `kdbench storage-proxy`: Optuna's calls go there
        self._ready = ready  # kdbench's tables exist; else :meth:`ensure_tables` creates them at the first write
        self._file = sqlite_file(engine)
        self._identity: tuple[int, int] | None = None  # (device, inode) of the SQLite file once it exists

    @classmethod
    def open(cls, url: str = DEFAULT_STORAGE, *, create: bool = True, optuna_proxy: str | None = None) -> Self:
        """Connect and check the database; nothing is written until the first write needs kdbench's tables.

        A sweep opens with ``create=True``: kdbench's tables (and a new SQLite file) are made by
        :meth:`ensure_tables` only once the study's input is accepted, so a refused input leaves no trace.
        A database holding tables that are neither kdbench's nor Optuna's is refused before any write.

        Args:
            url: SQLAlchemy URL of the database.
            create: allow a database without kdbench's tables (a sweep); else it must hold kdbench results
                already, and a missing SQLite file is an error (ls, show, report).
            optuna_proxy: ``host:port`` of an Optuna storage proxy serving this database's Optuna tables
                (:mod:`kdbench.store.proxy`); None: Optuna's calls go to the database itself.

        Raises:
            StoreError: unreachable or missing database, a folder that does not exist or cannot be written,
                another application's tables, no kdbench tables (``create=False``), or one written by a newer
                kdbench.
        """
        shown = shown_url(url)
        engine = make_engine(url)
        file = sqlite_file(engine)
        read_only = not create and file is not None and file.exists() and not writable_file(file)
        if read_only:  # ls, show, report on a file this process may not write: read it where it lies
            engine = make_engine(url, read_only=True)
        if file is not None and not file.exists():
            if not create:
                raise StoreError(f"--storage {shown}: no such database file {file}; run kdbench sweep first "
                                 "or point --storage at its database")
            folder = file.resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise StoreError(f"--storage {shown}: cannot open the database (folder {folder} does not exist or "
                                 "is not writable); check the path (a SQLite file in a writable folder that exists)")
            return cls(url, engine, ready=False, optuna_proxy=optuna_proxy)  # the file is created by the first write

        def check() -> bool:
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                if MetaRow.__tablename__ not in tables:
                    foreign = sorted(tables - set(Base.metadata.tables) - OPTUNA_TABLES)
                    if tables & OPTUNA_TABLES and OPTUNA_VERSION_TABLE not in tables:
                        foreign = sorted(tables & OPTUNA_TABLES) + foreign  # Optuna's names, not Optuna's tables
                    if foreign:
                        raise StoreError(f"--storage {shown}: not a kdbench database: it holds tables of another "
                                         f"application ({', '.join(foreign[:5])}); point --storage at a new file "
                                         "or at a kdbench database")
                    ours = sorted(tables & set(Base.metadata.tables))
                    if ours:  # never a creation in progress: kdbench_meta is created first (ensure_tables)
                        raise StoreError(
                            f"--storage {shown}: a damaged kdbench database: it holds kdbench's tables "
                            f"({', '.join(ours)}) but not kdbench_meta, which records their schema version; restore "
                            "it from a backup or, if this kdbench or an older one wrote it, recreate that table "
                            "with its version row (CREATE TABLE kdbench_meta (key VARCHAR(64) PRIMARY KEY, value "
                            f"TEXT); INSERT INTO kdbench_meta VALUES ('schema_version', '{SCHEMA_VERSION}'))")
                    if not create:
                        raise StoreError(f"--storage {shown}: no kdbench results in this database; "
                                         "run kdbench sweep")
                    return False
                row = conn.execute(sa.select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar()
                version = _schema_version(row, shown)
                gaps = schema_gaps(conn) if version is not None and version <= SCHEMA_VERSION else Gaps()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"--storage {shown}: written by a newer kdbench (schema {version}, this one reads up to "
                    f"{SCHEMA_VERSION}); upgrade kdbench (pip install -U kdbench)"
                )
            if version is not None and (version < SCHEMA_VERSION or gaps):
                if read_only and (version < SCHEMA_VERSION or gaps.columns):  # a missing index or width: read as is
                    raise StoreError(
                        f"--storage {shown}: written by an older kdbench (schema {version}, this one reads "
                        f"{SCHEMA_VERSION}) and read-only here; open it once where it may be written "
                        "(kdbench ls --storage ...) to add the new columns, or use the older kdbench")
                if not read_only:
                    upgrade(engine)
            return version is not None

        try:
            ready = retry_schema_race(check)
        except DBAPIError as exc:  # unreachable, refused, not a database, ...
            fix = "check the path (a SQLite file in a writable folder that exists)" if url.startswith("sqlite") else \
                "check the URL, that the server is up and the user may connect"
            raise StoreError(f"--storage {shown}: cannot open the database ({first_line(exc)}); {fix}") from None
        store = cls(url, engine, ready=ready, read_only=read_only, optuna_proxy=optuna_proxy)
        store.check_file()  # the SQLite file's identity, from now on
        return store

    def check_file(self) -> None:
        """Refuse to go on when the SQLite file was deleted or replaced since this process opened it (its
        writes would go to a file nobody can read: a sweep checks before each claim).

        Raises:
            StoreError: the file is gone or is another file now.
        """
        if self._file is None or not self._ready:
            return
        try:
            st = self._file.stat()
        except OSError:
            st = None
        now = (st.st_dev, st.st_ino) if st is not None else None
        if self._identity is None:
            self._identity = now
        if now is None or now != self._identity:
            raise StoreError(f"--storage {self.url}: the database file was deleted or replaced while this process "
                             "used it; stopping (what was written since is lost). Restore it, or start again")

    @property
    def ready(self) -> bool:
        """Whether kdbench's tables exist (a sweep's store gets them at its first write)."""
        return self._ready

    def ensure_tables(self) -> None:
        """Create kdbench's tables and schema version if missing (the first write of a new study's sweep)."""
        if self._ready:
            return
        if self.read_only:
            raise StoreError(f"--storage {self.url}: the database is read-only here; nothing can be written")

        def create() -> None:
            with self.engine.begin() as conn:
                # kdbench_meta first: where each CREATE commits alone (SQLite, MySQL), a worker opening the
                # database meanwhile never finds kdbench's tables without it (which it calls a damaged database)
                Base.metadata.tables[MetaRow.__tablename__].create(conn, checkfirst=True)
                Base.metadata.create_all(conn)
                if conn.execute(sa.select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar() is None:
                    conn.execute(sa.insert(MetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))

        try:
            retry_schema_race(create)
        except DBAPIError as exc:  # a read-only file, a full disk, a user who may not create tables
            raise StoreError(f"--storage {self.url}: cannot create kdbench's tables ({first_line(exc)}); "
                             "check that the database may be written") from None
        self._ready = True
        self.check_file()  # the new file's identity

    @classmethod
    def get(cls, storage: str | Self, *, create: bool = True) -> Self:
        """``storage`` itself when it is already open, else :meth:`open` on the URL (as Optuna's ``get_storage``)."""
        return storage if isinstance(storage, cls) else cls.open(str(storage), create=create)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose block is one transaction (committed on success, rolled back on error)."""
        self.ensure_tables()
        with self._sessions.begin() as s:
            yield s

    def connect(self) -> sa.Connection:
        """A connection for reads (kdbench's tables made first if this store has none yet)."""
        self.ensure_tables()
        return self.engine.connect()

    def has_optuna_tables(self) -> bool:
        """Whether Optuna has written to this database (opening its storage would otherwise create tables)."""
        with self.engine.connect() as conn:
            return sa.inspect(conn).has_table(OPTUNA_VERSION_TABLE)

    def optuna_study(self, name: str) -> optuna.Study:
        """The stored Optuna study ``name``, read through :meth:`optuna_storage`.

        Raises:
            KeyError: no Optuna tables in this database, or no study of that name.
            StoreError: the database could not be read.
        """
        import optuna

        if not self.has_optuna_tables():  # opening Optuna's storage there would add its tables
            raise KeyError("no Optuna tables in this database")
        try:
            return optuna.load_study(study_name=name, storage=self.optuna_storage())
        except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise StoreError(f"--storage {self.url}: Optuna study {name!r} not readable ({first_line(exc)})") from None

    def optuna_storage(self) -> BaseStorage:
        """Optuna's ``RDBStorage`` on this database, built once from the real (unmasked) URL; with
        :attr:`optuna_proxy`, a client of that proxy (:func:`kdbench.store.proxy.connect`) instead.

        SQLite gets the same busy timeout as kdbench's engine. Workers starting together on a new
        database race to create Optuna's tables; the loser retries.

        Raises:
            StoreError: the proxy does not answer.
        """
        if self._optuna is None:
            import optuna

            self.ensure_tables()  # kdbench's tables first: the database is kdbench's from its first write
            if self.optuna_proxy is not None:
                from kdbench.store.proxy import connect

                self._optuna = connect(self.optuna_proxy)
                return self._optuna

            url = self.engine.url.render_as_string(hide_password=False)
            kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} \
                if url.startswith("sqlite") else server_engine_kwargs(url)
            rdb = retry_schema_race(lambda: _patiently(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs)))
            patient(rdb.engine)
            if url.startswith("sqlite"):  # Optuna's own connections: the same commit cost as kdbench's
                event.listen(rdb.engine, "connect", _sqlite_sync)
                rdb.engine.dispose()  # connections opened while Optuna checked its tables lack it
            self._optuna = rdb
        return self._optuna
