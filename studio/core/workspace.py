"""Workspace: one `.studio` SQLite file (WAL) + a `<name>.studio.d/` folder of variant ONNX files.

It remembers the source model (path + sha256), every variant (recipe, parent, note, file), the
metrics of each variant (kind / source / n_samples kept), the job log and the GUI's state. Every
mutating call commits at once (autosave), so a crash or kill -9 loses at most the call in flight.

Safety rules:
- one writer: an exclusive `flock` on `<path>.lock`; a second writer gets a WorkspaceError naming
  the pid that holds it. Read-only opens take no lock and work on an in-memory snapshot.
- a file that is corrupt, not a workspace, or from a newer studio raises WorkspaceError and is
  never written (it is checked through a read-only connection before anything else happens).
- older schemas are migrated in place after a `<path>.v<N>.bak` copy is taken.
- jobs still marked "running" when a writer opens the file are orphans (the lock proves their
  owner is gone) and become "interrupted"; `rerun_info(job_id)` gives back their kind + params.

Deleting a variant re-parents its children to the deleted variant's parent, so the history tree
stays connected and no other variant is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from studio import __version__
from studio.core.errors import ModelLoadError, RecipeError, WorkspaceError
from studio.core.metrics import Metric
from studio.core.model import ModelHandle, file_sha256, load_model, load_onnx_file, save_model
from studio.core.recipe import Recipe

SCHEMA_VERSION = 2
SUFFIX = ".studio"
ORIGINAL = "original"  # pseudo variant id: metrics of the source model live under it
JOB_STATUSES = ("running", "finished", "failed", "cancelled", "interrupted")
SQLITE_MAGIC = b"SQLite format 3\x00"

# v1: the first released schema (source, variants, metrics). Kept verbatim: migrations and the
# migration test start from it.
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE variants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id TEXT,
    recipe_yaml TEXT NOT NULL,
    file TEXT NOT NULL,
    created REAL NOT NULL,
    studio_version TEXT NOT NULL
);
CREATE TABLE metrics (
    variant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    kind TEXT NOT NULL,
    n_samples INTEGER,
    source TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    UNIQUE (variant_id, name, kind, source)
);
"""

# v1 -> v2: notes, provenance and warnings per variant, metric extras, the job log, UI state.
MIGRATE_V1_V2 = """
ALTER TABLE variants ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE variants ADD COLUMN provenance TEXT NOT NULL DEFAULT '{}';
ALTER TABLE variants ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
ALTER TABLE metrics ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    variant_id TEXT,
    pid INTEGER,
    started REAL NOT NULL,
    ended REAL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE ui_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

MIGRATIONS = {1: MIGRATE_V1_V2}  # from-version -> script that brings it to from-version + 1


# ---------------------------------------------------------------------- records


@dataclass
class VariantRecord:
    """One stored variant. `missing` is True when its ONNX file is gone (message says which)."""

    id: str
    name: str
    parent_id: str | None
    recipe_yaml: str
    file: str  # relative to the workspace's .studio.d folder
    path: Path  # absolute path of the ONNX file
    created: float
    studio_version: str
    note: str = ""
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    missing: bool = False
    message: str = ""

    @property
    def recipe(self) -> Recipe:
        return Recipe.loads(self.recipe_yaml, source=f"variant {self.name}")

    def metric(self, name: str) -> Metric | None:
        """The metric called `name` (measured preferred over fidelity over estimated)."""
        order = {"measured": 0, "fidelity": 1, "estimated": 2}
        found = sorted((m for m in self.metrics if m.name == name), key=lambda m: order[m.kind])
        return found[0] if found else None

    def size_on_disk(self) -> int | None:
        """Bytes of the variant's file(s) on disk, or None when missing."""
        if not self.path.exists():
            return None
        data = self.path.with_name(self.path.name + ".data")
        return self.path.stat().st_size + (data.stat().st_size if data.exists() else 0)


@dataclass
class JobRecord:
    id: str
    kind: str  # e.g. "compress", "measure", "sensitivity", "auto", "export"
    status: str  # running | finished | failed | cancelled | interrupted
    params: dict
    variant_id: str | None
    pid: int | None
    started: float
    ended: float | None
    message: str


@dataclass
class PlotPoint:
    """One point of the trade-off plot: a variant (or the original) and its metrics."""

    variant_id: str
    name: str
    metrics: list[Metric]


# ---------------------------------------------------------------------- helpers


def _place_copy(src: Path, dst: Path) -> None:
    """Hard-link (instant) or copy `src` to `dst` atomically (temp name + rename)."""
    if not src.is_file():
        raise WorkspaceError(f"variant file {src} is missing", hint="re-run Apply & measure")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def variants_dir(path: Path) -> Path:
    """`model.studio` -> `model.studio.d/` (variant files live there)."""
    return path.with_name(path.name + ".d")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _encode_params(params: dict) -> str:
    # Recipes travel as YAML so a re-run gets exactly the recipe that was used.
    def enc(v):
        if isinstance(v, Recipe):
            return {"__recipe__": v.dump("yaml")}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {str(k): enc(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        return v

    try:
        return json.dumps(enc(params))
    except TypeError as e:
        raise WorkspaceError(f"job params must be JSON data (or Recipes): {e}") from None


def _decode_params(text: str) -> dict:
    def dec(v):
        if isinstance(v, dict):
            if set(v) == {"__recipe__"}:
                return Recipe.loads(v["__recipe__"], source="job params")
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    return dec(json.loads(text or "{}"))


class _Lock:
    """Exclusive flock on `<workspace>.lock`; the holder's pid is written inside for messages."""

    def __init__(self, path: Path):
        import fcntl

        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkspaceError(
                f"cannot lock {path.with_suffix('')} for writing ({e.strerror})",
                hint="open it read-only, or copy it to a writable folder",
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(self.fd)
            raise WorkspaceError(
                f"{path.with_suffix('')}: open in another studio window (pid {holder})",
                hint="close it there, or open this workspace read-only",
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def inspect_file(path: Path) -> int:
    """Validate a workspace file without writing it; returns its schema version.

    Raises WorkspaceError for a missing, corrupt, foreign or newer-version file.
    """
    if not path.exists():
        raise WorkspaceError(f"{path}: no such workspace", hint="create it with Workspace.create")
    if not path.is_file():
        raise WorkspaceError(f"{path} is not a workspace file")
    with open(path, "rb") as f:
        head = f.read(100)
    if not head.startswith(SQLITE_MAGIC):
        raise WorkspaceError(
            f"{path}: not a studio workspace (corrupt or another file type)",
            hint="restore it from a backup (*.bak) or create a new workspace",
        )
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise WorkspaceError(f"{path}: cannot be read ({e})") from None
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise WorkspaceError(
                f"{path}: made by a newer Pareto Studio (workspace schema {version}, "
                f"this studio reads up to {SCHEMA_VERSION})",
                hint="upgrade Pareto Studio to open it",
            )
        check = con.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise WorkspaceError(f"{path}: the workspace file is damaged ({check})")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version < 1 or not {"meta", "variants", "metrics"} <= tables:
            raise WorkspaceError(f"{path}: an SQLite file, but not a Pareto Studio workspace")
        return version
    except sqlite3.DatabaseError as e:
        raise WorkspaceError(
            f"{path}: the workspace file is damaged ({e})", hint="restore it from a backup (*.bak)"
        ) from None
    finally:
        con.close()


def migrate(con: sqlite3.Connection, from_version: int) -> int:
    """Bring an open connection from `from_version` to SCHEMA_VERSION in one transaction."""
    v = from_version
    while v < SCHEMA_VERSION:
        con.executescript("BEGIN;" + MIGRATIONS[v] + f"PRAGMA user_version = {v + 1};COMMIT;")
        v += 1
    return v


# ---------------------------------------------------------------------- the workspace


class Workspace:
    """A project file. Create with `Workspace.create`, open with `Workspace.open`; use as a
    context manager or call `close()`. Thread-safe (one lock around the connection), so a GUI
    worker thread may record metrics while the main thread reads."""

    def __init__(self, path: Path, con: sqlite3.Connection, lock: _Lock | None, read_only: bool):
        self.path = path.resolve()
        self.dir = variants_dir(self.path)
        self.read_only = read_only
        self._con = con
        self._lock = lock
        self._mutex = threading.RLock()
        self.messages: list[str] = []  # things the user should know after open
        self.source_changed = False
        self.source_missing = False
        self.interrupted_jobs: list[str] = []

    # ------------------------------------------------------------------ open / create

    @classmethod
    def create(cls, path: str | os.PathLike, source: ModelHandle) -> Workspace:
        """Create a new workspace for `source`; refuses to overwrite an existing file."""
        path = Path(path)
        if path.exists():
            raise WorkspaceError(f"{path} already exists", hint="open it, or choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        tmp.unlink(missing_ok=True)
        src = source.source_path.resolve() if source.source_path else None
        if src is None:
            # An in-memory model: keep a copy so the workspace can always reload its source.
            src = save_model(source.proto, variants_dir(path) / "source.onnx").resolve()
        meta = {
            "source_path": str(src),
            "source_relpath": os.path.relpath(src, path.parent.resolve()),
            "source_sha256": source.sha256 if source.source_path else file_sha256(src),
            "source_kind": source.source_kind,
            "torch_source": json.dumps(source.torch_source),
            "created": repr(time.time()),
            "studio_version": __version__,
        }
        con = sqlite3.connect(tmp)
        try:
            con.executescript(SCHEMA_V1 + "PRAGMA user_version = 1;")
            migrate(con, 1)
            with con:
                con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        os.replace(tmp, path)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, *, read_only: bool = False) -> Workspace:
        """Open an existing workspace. Raises WorkspaceError (file untouched) when it is locked
        by another writer, corrupt, or from a newer studio. Messages about a changed or missing
        source and missing variant files are in `ws.messages`."""
        path = Path(path)
        lock = None
        if not read_only:
            if not path.exists():
                raise WorkspaceError(f"{path}: no such workspace", hint="create it first")
            lock = _Lock(_lock_path(path))
        try:
            version = inspect_file(path)
            if read_only:
                con = cls._snapshot(path)
            else:
                if version < SCHEMA_VERSION:
                    shutil.copy2(path, path.with_name(f"{path.name}.v{version}.bak"))
                con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                migrate(con, version)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        ws = cls(path, con, lock, read_only)
        if version < SCHEMA_VERSION and not read_only:
            ws.messages.append(f"workspace upgraded from schema {version} to {SCHEMA_VERSION} (backup kept)")
        ws._after_open()
        return ws

    @staticmethod
    def _snapshot(path: Path) -> sqlite3.Connection:
        # Read-only: copy into memory so an older schema can be migrated without touching disk.
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        try:
            src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                src.backup(mem)
            finally:
                src.close()
        except sqlite3.Error as e:
            mem.close()
            raise WorkspaceError(f"{path}: cannot be read ({e})") from None
        return mem

    def _after_open(self) -> None:
        if not self.read_only:
            self._recover_jobs()
        self._check_source()
        for v in self.variants():
            if v.missing:
                self.messages.append(v.message)

    def _recover_jobs(self) -> None:
        # We hold the writer lock, so no live studio owns a "running" row: each is an orphan.
        me = os.getpid()
        for job_id, pid in self._q("SELECT id, pid FROM jobs WHERE status = 'running'"):
            if pid and pid != me and _pid_alive(pid):
                why = f"interrupted: its studio (pid {pid}) no longer holds the workspace"
            elif pid == me:
                why = "interrupted: the workspace was closed while the job was running"
            else:
                why = f"interrupted: the studio process (pid {pid}) ended while the job was running"
            self._exec(
                "UPDATE jobs SET status='interrupted', ended=?, message=? WHERE id=?",
                (time.time(), why, job_id),
            )
            self.interrupted_jobs.append(job_id)
        if self.interrupted_jobs:
            self.messages.append(
                f"{len(self.interrupted_jobs)} job(s) were interrupted by a crash or kill; "
                "re-run them from the jobs panel"
            )

    def _check_source(self) -> None:
        p = self.source_path
        if p is None or not p.exists():
            self.source_missing = True
            self.messages.append(
                f"source model {self._meta('source_path')} is missing; variants still open, "
                "but re-applying recipes needs the source (relink it with relink_source)"
            )
            return
        sha = self._meta("source_sha256")
        if sha and file_sha256(p) != sha:
            self.source_changed = True
            self.messages.append(
                f"source model {p} changed on disk since the workspace was created "
                f"(sha256 {sha[:12]}… differs); stored variants were made from the old file"
            )

    # ------------------------------------------------------------------ low level

    def _q(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._mutex:
            self._ensure_open()
            return self._con.execute(sql, tuple(args)).fetchall()

    def _exec(self, sql: str, args: Iterable = ()) -> None:
        with self._tx() as con:
            con.execute(sql, tuple(args))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction per mutating call (autosave)."""
        if self.read_only:
            raise WorkspaceError(f"{self.path} is open read-only", hint="open it for writing to change it")
        with self._mutex:
            self._ensure_open()
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def _ensure_open(self) -> None:
        if self._con is None:
            raise WorkspaceError(f"{self.path} is closed")

    def _meta(self, key: str, default: str = "") -> str:
        r = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return r[0][0] if r else default

    def _set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ source

    @property
    def source_path(self) -> Path | None:
        """The source model: its stored absolute path, else the stored path relative to the
        workspace (a project folder that was moved as a whole)."""
        p = self._meta("source_path")
        if p and Path(p).exists():
            return Path(p)
        rel = self._meta("source_relpath")
        if rel and (self.path.parent / rel).exists():
            return (self.path.parent / rel).resolve()
        return Path(p) if p else None

    @property
    def source_sha256(self) -> str:
        return self._meta("source_sha256")

    def load_source(self) -> ModelHandle:
        """Load the source model (torch sources with the stored factory settings)."""
        p = self.source_path
        if p is None or not p.exists():
            raise WorkspaceError(f"source model {self._meta('source_path')} is missing")
        ts = json.loads(self._meta("torch_source", "null") or "null") or {}
        try:
            return load_model(p, factory=ts.get("factory"), trust_pickle=bool(ts.get("trust_pickle")))
        except ModelLoadError as e:
            raise WorkspaceError(f"source model cannot be loaded: {e}") from e

    def relink_source(self, path: str | os.PathLike, *, accept_changed: bool = False) -> None:
        """Point the workspace at a moved source file. A file with another hash is refused
        unless `accept_changed` (then the new hash is stored)."""
        p = Path(path).resolve()
        sha = file_sha256(p)
        if sha != self.source_sha256 and not accept_changed:
            raise WorkspaceError(f"{p} is not the workspace's source model (sha256 differs)")
        self._set_meta("source_path", str(p))
        self._set_meta("source_relpath", os.path.relpath(p, self.path.parent.resolve()))
        self._set_meta("source_sha256", sha)
        self.source_changed = self.source_missing = False

    # ------------------------------------------------------------------ variants

    def add_variant(
        self,
        variant,
        name: str | None = None,
        *,
        metrics: Iterable[Metric] = (),
        parent: str | None = None,
        note: str = "",
        file: str | os.PathLike | None = None,
    ) -> str:
        """Store a pipeline Variant: its ONNX goes to `<name>.studio.d/<id>.onnx` (atomic), then
        one row + its metrics are committed. Returns the new variant id. `file`: a self-contained
        ONNX file already holding the variant; it is linked (or copied) instead of serializing
        `variant.proto`, which is then never read (no big-proto work on the caller's thread)."""
        parent = parent if parent is not None else getattr(variant, "parent", None)
        if parent and not self._q("SELECT 1 FROM variants WHERE id = ?", (parent,)):
            raise WorkspaceError(f"parent variant {parent!r} is not in this workspace")
        if self.read_only:
            raise WorkspaceError(f"{self.path} is open read-only")
        vid = uuid.uuid4().hex[:10]
        n = self._q("SELECT COUNT(*) FROM variants")[0][0]
        name = name or variant.recipe.name or f"variant {n + 1}"
        rel = f"{vid}.onnx"
        if file is not None:
            _place_copy(Path(file), self.dir / rel)
        else:
            save_model(variant.proto, self.dir / rel)
        all_metrics = list(getattr(variant, "metrics", []) or []) + list(metrics)
        try:
            with self._tx() as con:
                con.execute(
                    "INSERT INTO variants (id, name, parent_id, recipe_yaml, file, created, "
                    "studio_version, note, provenance, warnings) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        vid,
                        name,
                        parent,
                        variant.recipe.dump("yaml"),
                        rel,
                        time.time(),
                        __version__,
                        note,
                        json.dumps(variant.provenance or {}, default=str),
                        json.dumps(list(variant.warnings or [])),
                    ),
                )
                self._insert_metrics(con, vid, all_metrics)
        except BaseException:
            (self.dir / rel).unlink(missing_ok=True)
            raise
        return vid

    def _insert_metrics(self, con: sqlite3.Connection, vid: str, metrics: Iterable[Metric]) -> None:
        # Same (name, kind, source) replaces: a re-measurement supersedes the old number.
        con.executemany(
            "INSERT OR REPLACE INTO metrics (variant_id, name, value, kind, n_samples, source, unit, extra)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [
                (vid, m.name, float(m.value), m.kind, m.n_samples, m.source, m.unit, json.dumps(m.extra))
                for m in metrics
            ],
        )

    def add_metrics(self, variant_id: str, metrics: Iterable[Metric]) -> None:
        """Record metrics for a variant (or ORIGINAL); same name+kind+source replaces."""
        self._require(variant_id, allow_original=True)
        with self._tx() as con:
            self._insert_metrics(con, variant_id, metrics)

    def metrics(self, variant_id: str) -> list[Metric]:
        rows = self._q(
            "SELECT name, value, kind, n_samples, source, unit, extra FROM metrics WHERE variant_id = ? "
            "ORDER BY rowid",
            (variant_id,),
        )
        return [
            Metric(
                name=r[0],
                value=r[1],
                kind=r[2],
                n_samples=r[3],
                source=r[4],
                unit=r[5],
                extra=json.loads(r[6]),
            )
            for r in rows
        ]

    def variants(self) -> list[VariantRecord]:
        """All variants, oldest first; missing files are flagged, never fatal."""
        rows = self._q(
            "SELECT id, name, parent_id, recipe_yaml, file, created, studio_version, note, provenance, "
            "warnings FROM variants ORDER BY created, rowid"
        )
        out = []
        for r in rows:
            path = self.dir / r[4]
            rec = VariantRecord(
                id=r[0],
                name=r[1],
                parent_id=r[2],
                recipe_yaml=r[3],
                file=r[4],
                path=path,
                created=r[5],
                studio_version=r[6],
                note=r[7],
                provenance=json.loads(r[8] or "{}"),
                warnings=json.loads(r[9] or "[]"),
                metrics=self.metrics(r[0]),
            )
            if not path.exists():
                rec.missing = True
                rec.message = f"variant {r[1]!r} ({r[0]}): its file {path} is missing; it cannot be loaded"
            out.append(rec)
        return out

    def variant(self, variant_id: str) -> VariantRecord:
        for v in self.variants():
            if v.id == variant_id:
                return v
        raise WorkspaceError(f"no variant {variant_id!r} in {self.path.name}")

    def find(self, id_or_name: str) -> VariantRecord:
        """A variant by id, id prefix, or name (for the CLI)."""
        vs = self.variants()
        hits = [v for v in vs if v.id == id_or_name] or [v for v in vs if v.name == id_or_name]
        hits = hits or [v for v in vs if v.id.startswith(id_or_name)]
        if len(hits) != 1:
            what = "no" if not hits else "more than one"
            raise WorkspaceError(
                f"{what} variant matches {id_or_name!r}", hint=f"ids: {', '.join(v.id for v in vs[:8])}"
            )
        return hits[0]

    def load_variant_proto(self, variant_id: str) -> onnx.ModelProto:
        """The variant's ONNX model; WorkspaceError when its file is missing or unreadable."""
        rec = self.variant(variant_id)
        if rec.missing:
            raise WorkspaceError(rec.message, hint="delete the variant or re-run its recipe")
        try:
            return load_onnx_file(rec.path)
        except ModelLoadError as e:
            raise WorkspaceError(f"variant {rec.name!r}: {e}") from e

    def load_variant(self, variant_id: str):
        """The stored variant as a pipeline Variant (proto, recipe, provenance, parent, metrics)."""
        from studio.core.pipeline import Variant

        rec = self.variant(variant_id)
        proto = self.load_variant_proto(variant_id)
        prov = dict(rec.provenance)
        prov["id"] = rec.id
        return Variant(
            proto, rec.recipe, prov, parent=rec.parent_id, warnings=rec.warnings, metrics=rec.metrics
        )

    def rename(self, variant_id: str, name: str) -> None:
        self._require(variant_id)
        if not name.strip():
            raise WorkspaceError("a variant name cannot be empty")
        self._exec("UPDATE variants SET name = ? WHERE id = ?", (name.strip(), variant_id))

    def annotate(self, variant_id: str, note: str) -> None:
        self._require(variant_id)
        self._exec("UPDATE variants SET note = ? WHERE id = ?", (note, variant_id))

    def delete(self, variant_id: str) -> None:
        """Remove a variant, its metrics and file. Its children are re-parented to its parent."""
        self._require(variant_id)
        parent = self._q("SELECT parent_id FROM variants WHERE id = ?", (variant_id,))[0][0]
        file = self._q("SELECT file FROM variants WHERE id = ?", (variant_id,))[0][0]
        with self._tx() as con:
            con.execute("UPDATE variants SET parent_id = ? WHERE parent_id = ?", (parent, variant_id))
            con.execute("DELETE FROM metrics WHERE variant_id = ?", (variant_id,))
            con.execute("DELETE FROM variants WHERE id = ?", (variant_id,))
        # Files go after the commit: a crash in between leaves an orphan file, never a dangling row.
        for p in (self.dir / file, self.dir / (file + ".data")):
            p.unlink(missing_ok=True)

    def branch(self, variant_id: str) -> Recipe:
        """The recipe to continue editing from (new variants made from it name this as parent)."""
        return self.variant(variant_id).recipe

    def tree(self) -> dict[str | None, list[str]]:
        """parent id -> child ids (None = children of the source model), oldest first."""
        out: dict[str | None, list[str]] = {None: []}
        for v in self.variants():
            out.setdefault(v.parent_id, []).append(v.id)
            out.setdefault(v.id, [])
        return out

    def plot_points(self) -> list[PlotPoint]:
        """The trade-off plot's points: the original (if it has metrics) and every variant."""
        pts = []
        orig = self.metrics(ORIGINAL)
        if orig:
            pts.append(PlotPoint(ORIGINAL, "original", orig))
        pts += [PlotPoint(v.id, v.name, v.metrics) for v in self.variants()]
        return pts

    def _require(self, variant_id: str, *, allow_original: bool = False) -> None:
        if allow_original and variant_id == ORIGINAL:
            return
        if not self._q("SELECT 1 FROM variants WHERE id = ?", (variant_id,)):
            raise WorkspaceError(f"no variant {variant_id!r} in {self.path.name}")

    # ------------------------------------------------------------------ jobs

    def start_job(self, kind: str, params: dict | None = None, *, variant_id: str | None = None) -> str:
        """Log a job as running (with everything needed to re-run it) and return its id."""
        jid = uuid.uuid4().hex[:10]
        self._exec(
            "INSERT INTO jobs (id, kind, status, params, variant_id, pid, started) VALUES (?,?,?,?,?,?,?)",
            (jid, kind, "running", _encode_params(params or {}), variant_id, os.getpid(), time.time()),
        )
        return jid

    def finish_job(
        self, job_id: str, status: str = "finished", message: str = "", *, variant_id: str | None = None
    ) -> None:
        """Close a job: status is finished / failed / cancelled (or interrupted)."""
        if status not in JOB_STATUSES or status == "running":
            raise WorkspaceError(f"job status must be one of {JOB_STATUSES[1:]}, got {status!r}")
        if not self._q("SELECT 1 FROM jobs WHERE id = ?", (job_id,)):
            raise WorkspaceError(f"no job {job_id!r} in {self.path.name}")
        self._exec(
            "UPDATE jobs SET status=?, ended=?, message=?, variant_id=COALESCE(?, variant_id) WHERE id=?",
            (status, time.time(), message, variant_id, job_id),
        )

    def jobs(self) -> list[JobRecord]:
        rows = self._q(
            "SELECT id, kind, status, params, variant_id, pid, started, ended, message FROM jobs "
            "ORDER BY started, rowid"
        )
        return [JobRecord(r[0], r[1], r[2], _decode_params(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def job(self, job_id: str) -> JobRecord:
        for j in self.jobs():
            if j.id == job_id:
                return j
        raise WorkspaceError(f"no job {job_id!r} in {self.path.name}")

    def rerun_info(self, job_id: str) -> tuple[str, dict]:
        """(kind, params) of a job, recipes restored as Recipe objects, to start it again."""
        j = self.job(job_id)
        return j.kind, j.params

    # ------------------------------------------------------------------ UI state

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-able value (current recipe YAML, selection, plot axes, ...)."""
        try:
            text = json.dumps(value)
        except TypeError as e:
            raise WorkspaceError(f"UI state {key!r} must be JSON data: {e}") from None
        self._exec("INSERT OR REPLACE INTO ui_state VALUES (?, ?)", (key, text))

    def get_state(self, key: str, default: Any = None) -> Any:
        r = self._q("SELECT value FROM ui_state WHERE key = ?", (key,))
        return json.loads(r[0][0]) if r else default

    def state(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._q("SELECT key, value FROM ui_state")}

    def set_current_recipe(self, recipe: Recipe) -> None:
        """The recipe being edited (restored on open)."""
        self.set_state("current_recipe", recipe.dump("yaml"))

    def current_recipe(self) -> Recipe | None:
        text = self.get_state("current_recipe")
        if not text:
            return None
        try:
            return Recipe.loads(text, source="workspace current recipe")
        except RecipeError as e:
            self.messages.append(f"the recipe being edited could not be restored: {e}")
            return None

    # ------------------------------------------------------------------ lifecycle

    @property
    def schema_version(self) -> int:
        return self._q("PRAGMA user_version")[0][0]

    def close(self) -> None:
        """Close the connection (checkpointing the WAL) and release the writer lock."""
        with self._mutex:
            if self._con is None:
                return
            if not self.read_only:
                try:
                    # Jobs of this window that never finished cannot finish after close.
                    self._con.execute(
                        "UPDATE jobs SET status='interrupted', ended=?, "
                        "message='interrupted: the workspace was closed while the job was running' "
                        "WHERE status='running' AND pid=?",
                        (time.time(), os.getpid()),
                    )
                    self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            self._con.close()
            self._con = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"<Workspace {self.path} ({mode})>"
