"""A results store: pair results in one SQLite file, safe to kill at any moment.

Each result is one row written in its own transaction, so a process killed
(even with ``kill -9``) loses at most the pair it was computing; SQLite's
write-ahead log makes the file readable again on the next open, and lets a
report read the store while a run writes to it.

A row is found again by its *key*: a hash of what decides the result (suite,
pair names, a fingerprint of each model's inputs, the options that change
the score, the tool version; see :func:`record_key`). Re-running a suite skips
pairs whose key is already stored.

The file identifies itself with SQLite's ``application_id`` and records its
schema in ``user_version``; a file that is not a store, or one written by a
newer awmtrace, is refused with a :class:`StoreError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from awmtrace._version import __version__
from awmtrace.errors import StoreError
from awmtrace.io.base import check_regular, open_regular
from awmtrace.io.identity import model_identity

__all__ = [
    "ResultsStore",
    "StoredRecord",
    "record_key",
    "model_fingerprint",
    "is_sqlite_file",
    "DEFAULT_STORE",
    "SCHEMA_VERSION",
]

#: Where ``awm suite run`` keeps results unless told otherwise.
DEFAULT_STORE = Path("awm-results.sqlite")
#: Version of the table layout; a store with a higher one is refused.
SCHEMA_VERSION = 1
#: SQLite ``application_id`` of a results store ("AWMR").
APPLICATION_ID = 0x41574D52

SQLITE_MAGIC = b"SQLite format 3\x00"


_SCHEMA = """
CREATE TABLE results (
    key TEXT PRIMARY KEY,
    suite TEXT,
    name_a TEXT NOT NULL,
    name_b TEXT NOT NULL,
    label TEXT,
    category TEXT,
    spec_a TEXT,
    spec_b TEXT,
    fingerprint_a TEXT,
    fingerprint_b TEXT,
    options TEXT NOT NULL,
    tool_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX results_by_pair ON results (suite, name_a, name_b);
"""

_COLUMNS = (
    "key", "suite", "name_a", "name_b", "label", "category", "spec_a", "spec_b",
    "fingerprint_a", "fingerprint_b", "options", "tool_version", "created_at", "result",
)  # fmt: skip


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def record_key(
    suite: str | None,
    name_a: str,
    name_b: str,
    fingerprint_a: str | None,
    fingerprint_b: str | None,
    options: dict[str, Any],
    tool_version: str,
) -> str:
    """The hex sha256 that identifies a result: same inputs, options and version, same key."""
    payload = {
        "suite": suite,
        "a": [name_a, fingerprint_a],
        "b": [name_b, fingerprint_b],
        "options": options,
        "tool_version": tool_version,
    }
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredRecord:
    """One stored comparison. ``result`` is :meth:`awmtrace.types.PairResult.to_dict` output.

    ``label`` is what the suite expects (``related`` / ``independent``), not
    the verdict, which lives in ``result["verdict"]``.
    """

    key: str
    suite: str | None
    name_a: str
    name_b: str
    label: str | None
    category: str | None
    result: dict[str, Any]
    created_at: str
    tool_version: str
    spec_a: str | None = None
    spec_b: str | None = None
    fingerprint_a: str | None = None
    fingerprint_b: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(  # noqa: PLR0913 - keyword-only: one per record field
        cls,
        *,
        name_a: str,
        name_b: str,
        result: Any,
        suite: str | None = None,
        label: str | None = None,
        category: str | None = None,
        spec_a: str | None = None,
        spec_b: str | None = None,
        fingerprint_a: str | None = None,
        fingerprint_b: str | None = None,
        options: dict[str, Any] | None = None,
        tool_version: str | None = None,
    ) -> StoredRecord:
        """A record with its key and timestamp filled in; ``result`` may be a ``PairResult`` or its dict."""
        data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        version = tool_version or __version__
        opts = dict(options or {})
        return cls(
            key=record_key(suite, name_a, name_b, fingerprint_a, fingerprint_b, opts, version),
            suite=suite,
            name_a=name_a,
            name_b=name_b,
            label=label,
            category=category,
            result=data,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            tool_version=version,
            spec_a=spec_a,
            spec_b=spec_b,
            fingerprint_a=fingerprint_a,
            fingerprint_b=fingerprint_b,
            options=opts,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "suite": self.suite,
            "name_a": self.name_a,
            "name_b": self.name_b,
            "label": self.label,
            "category": self.category,
            "spec_a": self.spec_a,
            "spec_b": self.spec_b,
            "fingerprint_a": self.fingerprint_a,
            "fingerprint_b": self.fingerprint_b,
            "options": self.options,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            "result": self.result,
        }


class ResultsStore:
    """An SQLite file of :class:`StoredRecord` rows (a context manager).

    ``create``: make the file (and its folder) when it does not exist;
    otherwise a missing file is a :class:`StoreError`. ``readonly``: open
    for reading only (SQLite ``mode=ro``), which works on a file or folder
    this user may not write and on a read-only file system. A store opened
    with ``create=False`` that cannot be opened for writing is opened that
    way too, so reports, ``evaluate`` and ``calibrate`` read such stores.
    """

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly or (not create and self._not_writable())
        if self.readonly:
            self._open_readonly()
            return
        exists = self.path.exists()
        if exists and self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a results store; pass a file path (e.g. {self.path / DEFAULT_STORE})")
        if not exists and not create:
            raise StoreError(f"{self.path}: no results store here; run `awm suite run` first or check --store")
        if exists:
            self._check_magic()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path.parent}: cannot create the store's folder ({exc.strerror or exc})") from None
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the results store ({exc})") from None
        try:
            self._init(create)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path}: not a usable results store ({exc})") from None
        except StoreError:
            self._conn.close()
            raise

    def _not_writable(self) -> bool:
        """Whether an existing store (or the folder its journal files go in) cannot be written by this process."""
        if not self.path.is_file():
            return False
        return not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))

    def _open_readonly(self) -> None:
        """Open with ``mode=ro``; where SQLite cannot even create the WAL index beside it, as an immutable file."""
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a results store; pass a file path (e.g. {self.path / DEFAULT_STORE})")
        if not self.path.exists():
            raise StoreError(f"{self.path}: no results store here; run `awm suite run` first or check --store")
        self._check_magic()
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        # mode=ro still needs the -shm file of a WAL database; in a read-only folder without one,
        # immutable=1 reads the main file as it is (nobody can be writing it: the folder is read-only).
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                self._conn = sqlite3.connect(uri + query, uri=True, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                self._init(create=False)
                return
            except sqlite3.OperationalError as exc:
                self._conn.close()
                last = exc
            except sqlite3.DatabaseError as exc:
                self._conn.close()
                raise StoreError(f"{self.path}: not a usable results store ({exc})") from None
            except StoreError:
                self._conn.close()
                raise
        raise StoreError(f"{self.path}: cannot open the results store for reading ({last})")

    def _check_magic(self) -> None:
        try:
            check_regular(self.path, "results store (SQLite file)")  # a FIFO is refused, not blocked on
            foreign = self.path.stat().st_size > 0 and not is_sqlite_file(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if foreign:
            raise StoreError(f"{self.path}: not a results store (not an SQLite file); pass another --store path")

    def _init(self, create: bool) -> None:
        c = self._conn
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if app_id == 0 and version == 0 and not tables:
            if not create:
                raise StoreError(f"{self.path}: empty file, not a results store")
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have initialised it while we waited for the lock.
                if c.execute("PRAGMA application_id").fetchone()[0] == 0:
                    for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                        c.execute(statement)
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            app_id, version = APPLICATION_ID, SCHEMA_VERSION
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{self.path}: an SQLite database, but not an awmtrace results store (application_id {app_id:#x}); "
                "pass another --store path"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer awmtrace (store schema {version}; this version reads up to "
                f"{SCHEMA_VERSION}); upgrade awmtrace or pass another --store path"
            )
        if self.readonly:
            return
        c.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed result survives power loss too, not only a killed process.
        c.execute("PRAGMA synchronous = FULL")

    def put(self, record: StoredRecord) -> None:
        """Store ``record`` (replacing one with the same key) in one transaction."""
        row = (
            record.key, record.suite, record.name_a, record.name_b, record.label, record.category,
            record.spec_a, record.spec_b, record.fingerprint_a, record.fingerprint_b,
            _canonical(record.options), record.tool_version, record.created_at, json.dumps(record.result),
        )  # fmt: skip
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only (this process may not write it); pass another --store path to save results")
        try:
            self._conn.execute(f"INSERT OR REPLACE INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", row)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write a result ({exc})") from None

    def has(self, key: str) -> bool:
        """Whether a result with this key is stored."""
        return self._query("SELECT 1 FROM results WHERE key = ? LIMIT 1", (key,)) != []

    def get(self, key: str) -> StoredRecord | None:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM results WHERE key = ?", (key,))
        return self._record(rows[0]) if rows else None

    def records(self, suite: str | None = None) -> list[StoredRecord]:
        """All records (of one suite when given), oldest first."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM results"
        args: tuple[Any, ...] = ()
        if suite is not None:
            sql += " WHERE suite = ?"
            args = (suite,)
        return [self._record(r) for r in self._query(sql + " ORDER BY created_at, rowid", args)]

    def latest(self, suite: str | None, name_a: str, name_b: str) -> StoredRecord | None:
        """The newest record of one pair, whatever inputs or version produced it."""
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM results WHERE suite IS ? AND name_a = ? AND name_b = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (suite, name_a, name_b),
        )
        return self._record(rows[0]) if rows else None

    def delete(self, key: str) -> bool:
        try:
            return self._conn.execute("DELETE FROM results WHERE key = ?", (key,)).rowcount > 0
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot delete a result ({exc})") from None

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM results", ())[0][0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the results store ({exc})") from None

    def _record(self, row: tuple[Any, ...]) -> StoredRecord:
        d = dict(zip(_COLUMNS, row, strict=True))
        try:
            d["options"] = json.loads(d["options"])
            d["result"] = json.loads(d["result"])
            problem = _row_problem(d)
        except (TypeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, huge numbers
            problem = f"unreadable JSON ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        if problem is not None:
            key = str(d.get("key"))[:12]
            raise StoreError(
                f"{self.path}: damaged row {key} ({d.get('suite')}: {d.get('name_a')} vs {d.get('name_b')}): {problem}; "
                "re-run that pair into a fresh store, or delete the row"
            ) from None
        return StoredRecord(**d)


# Fields of a stored result that readers use as numbers (None allowed).
_NUMBER_FIELDS = ("score", "score_q", "score_k", "z", "p_value")


def _row_problem(d: dict[str, Any]) -> str | None:
    """What makes a stored row unusable, or ``None``."""
    for column in ("key", "name_a", "name_b", "tool_version", "created_at"):
        if not isinstance(d[column], str):
            return f"column {column!r} is {type(d[column]).__name__}, expected text"
    if not isinstance(d["options"], dict):
        return f"options are {type(d['options']).__name__}, expected a JSON object"
    result = d["result"]
    if not isinstance(result, dict):
        return f"the result is {type(result).__name__}, expected a JSON object"
    for name in _NUMBER_FIELDS:
        value = result.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"result field {name!r} is {value!r:.40}, expected a number"
    for name in ("verdict", "alignment", "layer_matching", "null"):
        if result.get(name) is not None and not isinstance(result[name], dict):
            return f"result field {name!r} is {type(result[name]).__name__}, expected an object"
    return None


def is_sqlite_file(path: str | Path) -> bool:
    """Whether ``path`` starts with SQLite's file header (raises ``OSError`` when it cannot be read).

    Opened through :func:`open_regular`: a FIFO given as a store is refused, not blocked on.
    """
    with open_regular(Path(path), "results store (SQLite file)") as fh:
        return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def model_fingerprint(path: str | Path) -> str:
    """What identifies a model's inputs: :func:`awmtrace.io.identity.model_identity` (Hub commit, else file stats)."""
    return model_identity(path)
