"""Workspace: round-trip, kill -9 recovery, migration, refusal of newer/corrupt/locked files."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from studio.core.errors import WorkspaceError
from studio.core.evaluate import evaluate, load_npz
from studio.core.jobs import drive
from studio.core.metrics import Metric
from studio.core.model import load_model
from studio.core.pipeline import Variant, compress
from studio.core.recipe import Recipe
from studio.core.workspace import ORIGINAL, SCHEMA_VERSION, Workspace, variants_dir
from tests.conftest import ROOT


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def handle(digits_onnx, tmp_path):
    # A private copy: some tests edit or delete the source.
    src = tmp_path / "digits.onnx"
    shutil.copy(digits_onnx, src)
    return load_model(src)


def plain_variant(handle, name: str) -> Variant:
    return Variant(handle.proto, Recipe(name=name), {"id": name})


def test_round_trip_restores_recipes_metrics_and_ui_state(handle, digits_eval, tmp_path):
    ds = load_npz(digits_eval).subset(range(64))
    r1 = Recipe.loads("name: dyn8\ndefaults:\n  quantize: int8_dynamic\n")
    v1 = drive(compress(handle, r1))
    m1 = evaluate(v1.proto, ds, reference=handle.proto)
    m1.append(Metric("size_bytes", float(v1.size_bytes()), "measured", "file on disk", unit="B"))
    r2 = Recipe.loads("name: svd\nlayers:\n  /fc1/Gemm: {decompose: {svd: {rank_ratio: 0.25}}}\n")
    v2 = drive(compress(handle, r2))
    m2 = evaluate(v2.proto, ds, reference=handle.proto)
    m0 = evaluate(handle.proto, ds)

    path = tmp_path / "proj.studio"
    with Workspace.create(path, handle) as ws:
        id1 = ws.add_variant(v1, metrics=m1)
        id2 = ws.add_variant(v2, name="low-rank fc1", metrics=m2, parent=id1)
        ws.add_metrics(ORIGINAL, m0)
        ws.annotate(id2, "rank 64 keeps accuracy")
        ws.set_current_recipe(r2.with_layer("/fc2/Gemm", r1.defaults))
        ws.set_state("plot", {"x": "size_bytes", "y": "top1", "log_x": True})
        ws.set_state("selection", [id2])
        points_before = [(p.variant_id, p.name, p.metrics) for p in ws.plot_points()]
        job = ws.start_job("measure", {"recipe": r2, "variant": id2, "n": 64})
        ws.finish_job(job, "finished", "ok", variant_id=id2)

    with Workspace.open(path) as ws:
        assert ws.messages == []
        recs = {v.id: v for v in ws.variants()}
        assert recs[id1].recipe == r1 and recs[id2].recipe == r2
        assert recs[id2].parent_id == id1 and recs[id2].note == "rank 64 keeps accuracy"
        assert recs[id1].name == "dyn8" and recs[id2].name == "low-rank fc1"
        assert recs[id1].metrics == m1 and recs[id2].metrics == m2  # kind, source, n_samples, unit
        top1 = recs[id2].metric("top1")
        assert top1.kind == "measured" and top1.n_samples == 64 and top1.source == ds.source
        assert recs[id2].metric("cosine_mean").kind == "fidelity"
        assert ws.metrics(ORIGINAL) == m0
        assert ws.current_recipe() == r2.with_layer("/fc2/Gemm", r1.defaults)
        assert ws.get_state("plot") == {"x": "size_bytes", "y": "top1", "log_x": True}
        assert ws.get_state("selection") == [id2]
        assert [(p.variant_id, p.name, p.metrics) for p in ws.plot_points()] == points_before
        assert ws.tree() == {None: [id1], id1: [id2], id2: []}
        assert ws.branch(id2) == r2
        (j,) = ws.jobs()
        assert (j.status, j.variant_id, j.message) == ("finished", id2, "ok")
        assert ws.rerun_info(job) == ("measure", {"recipe": r2, "variant": id2, "n": 64})
        # The stored file is the variant: same outputs as the in-memory one.
        back = ws.load_variant(id2)
        assert back.proto.SerializeToString() == v2.proto.SerializeToString()
        assert ws.schema_version == SCHEMA_VERSION


def test_kill_9_keeps_committed_work_and_marks_job_interrupted(handle, tmp_path):
    path = tmp_path / "killed.studio"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.core.workspace_killer", str(path), str(handle.source_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until READY (or EOF if the helper failed)
        assert line.startswith("READY"), proc.stderr.read()[-2000:]
        _, vid, job_id, pid = line.split()
        # While it lives, the workspace is locked against a second writer.
        with pytest.raises(WorkspaceError, match=f"pid {pid}"):
            Workspace.open(path)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    # Lock released by the kernel: another process could take it now.
    fd = os.open(str(path) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    with Workspace.open(path) as ws:
        (rec,) = ws.variants()
        assert rec.id == vid and not rec.missing and rec.name == "killed-run"
        assert rec.metrics == [Metric("top1", 0.5, "measured", "killer.npz", n_samples=7)]
        (job,) = ws.jobs()
        assert job.id == job_id and job.status == "interrupted"
        assert f"pid {pid}" in job.message and ws.interrupted_jobs == [job_id]
        assert any("interrupted" in m for m in ws.messages)
        kind, params = ws.rerun_info(job_id)
        assert kind == "measure" and params["variant"] == vid
        assert params["recipe"] == Recipe.loads("name: killed-run\ndefaults:\n  quantize: int8_dynamic\n")
        assert ws.get_state("selection") == [vid]
        assert ws.load_variant_proto(vid).graph.node  # the variant file was complete


V1_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE variants (id TEXT PRIMARY KEY, name TEXT NOT NULL, parent_id TEXT, recipe_yaml TEXT NOT NULL,
    file TEXT NOT NULL, created REAL NOT NULL, studio_version TEXT NOT NULL);
CREATE TABLE metrics (variant_id TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, kind TEXT NOT NULL,
    n_samples INTEGER, source TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '',
    UNIQUE (variant_id, name, kind, source));
PRAGMA user_version = 1;
"""


def test_v1_workspace_is_migrated(handle, tmp_path):
    path = tmp_path / "old.studio"
    con = sqlite3.connect(path)
    con.executescript(V1_DDL)
    src = str(handle.source_path)
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("source_path", src),
            ("source_sha256", handle.sha256),
            ("created", "0"),
            ("studio_version", "0.0.1"),
        ],
    )
    recipe = Recipe.loads("name: old\ndefaults:\n  quantize: int8_dynamic\n")
    con.execute(
        "INSERT INTO variants VALUES (?,?,?,?,?,?,?)",
        ("v1abc", "old variant", None, recipe.dump(), "v1abc.onnx", 1.0, "0.0.1"),
    )
    con.execute(
        "INSERT INTO metrics VALUES (?,?,?,?,?,?,?)", ("v1abc", "top1", 0.9, "measured", 10, "e.npz", "")
    )
    con.commit()
    con.close()
    variants_dir(path).mkdir()
    shutil.copy(handle.source_path, variants_dir(path) / "v1abc.onnx")
    before = sha(path)

    with Workspace.open(path) as ws:
        assert ws.schema_version == SCHEMA_VERSION
        assert any("upgraded from schema 1" in m for m in ws.messages)
        (rec,) = ws.variants()
        assert (rec.id, rec.name, rec.note, rec.recipe) == ("v1abc", "old variant", "", recipe)
        assert rec.metrics == [Metric("top1", 0.9, "measured", "e.npz", n_samples=10)]
        assert ws.jobs() == []
        ws.set_state("k", 1)  # v2 tables exist and are writable
        ws.annotate("v1abc", "migrated")
    assert sha(path.with_name("old.studio.v1.bak")) == before  # the pre-migration backup
    with Workspace.open(path, read_only=True) as ws:
        assert ws.get_state("k") == 1 and ws.variants()[0].note == "migrated"


def test_read_only_open_of_v1_migrates_in_memory_only(handle, tmp_path):
    path = tmp_path / "old.studio"
    con = sqlite3.connect(path)
    con.executescript(V1_DDL)
    con.execute("INSERT INTO meta VALUES ('source_path', ?)", (str(handle.source_path),))
    con.commit()
    con.close()
    before = sha(path)
    with Workspace.open(path, read_only=True) as ws:
        assert ws.schema_version == SCHEMA_VERSION and ws.jobs() == []
        with pytest.raises(WorkspaceError, match="read-only"):
            ws.set_state("x", 1)
    assert sha(path) == before


def test_newer_workspace_is_refused_untouched(tmp_path):
    path = tmp_path / "future.studio"
    con = sqlite3.connect(path)
    con.executescript(V1_DDL + f"PRAGMA user_version = {SCHEMA_VERSION + 7};")
    con.close()
    before = sha(path)
    for ro in (False, True):
        with pytest.raises(WorkspaceError, match="newer Pareto Studio"):
            Workspace.open(path, read_only=ro)
    assert sha(path) == before
    assert not Path(str(path) + "-wal").exists()


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"SQLite format 3\x00" + b"\xff" * 4000, b""],
    ids=["garbage", "sqlite-header-then-garbage", "empty"],
)
def test_corrupt_workspace_is_refused_untouched(tmp_path, content):
    path = tmp_path / "bad.studio"
    path.write_bytes(content)
    before = sha(path)
    with pytest.raises(WorkspaceError):
        Workspace.open(path)
    assert sha(path) == before
    # The lock was released on failure: the file can be replaced and opened later.
    fd = os.open(str(path) + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.studio"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(WorkspaceError, match="not a Pareto Studio workspace"):
        Workspace.open(path)


def test_locked_workspace_refuses_second_writer_and_allows_read_only(handle, tmp_path):
    path = tmp_path / "p.studio"
    ws = Workspace.create(path, handle)
    vid = ws.add_variant(plain_variant(handle, "a"))
    before = sha(path)
    with pytest.raises(WorkspaceError, match=f"open in another studio window \\(pid {os.getpid()}\\)"):
        Workspace.open(path)
    assert sha(path) == before
    with Workspace.open(path, read_only=True) as ro:
        assert [v.id for v in ro.variants()] == [vid]
        with pytest.raises(WorkspaceError, match="read-only"):
            ro.rename(vid, "b")
    ws.rename(vid, "renamed")  # the writer is unaffected by the reader
    ws.close()
    with Workspace.open(path) as again:
        assert again.variants()[0].name == "renamed"


def test_missing_variant_file_is_flagged_others_load(handle, tmp_path):
    path = tmp_path / "p.studio"
    with Workspace.create(path, handle) as ws:
        a = ws.add_variant(plain_variant(handle, "a"))
        b = ws.add_variant(plain_variant(handle, "b"))
    (variants_dir(path) / f"{a}.onnx").unlink()
    with Workspace.open(path) as ws:
        recs = {v.id: v for v in ws.variants()}
        assert recs[a].missing and "is missing" in recs[a].message
        assert not recs[b].missing
        assert any(a in m and "missing" in m for m in ws.messages)
        with pytest.raises(WorkspaceError, match="missing"):
            ws.load_variant_proto(a)
        assert ws.load_variant_proto(b).graph.node


def test_source_changed_or_missing_is_reported(handle, tmp_path):
    path = tmp_path / "p.studio"
    Workspace.create(path, handle).close()
    src = handle.source_path
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF  # a different file at the same path
    src.write_bytes(bytes(data))
    with Workspace.open(path) as ws:
        assert ws.source_changed and any("changed on disk" in m for m in ws.messages)
    src.unlink()
    with Workspace.open(path) as ws:
        assert ws.source_missing and any("missing" in m for m in ws.messages)
        with pytest.raises(WorkspaceError, match="missing"):
            ws.load_source()


def test_delete_reparents_children_and_removes_file(handle, tmp_path):
    with Workspace.create(tmp_path / "p.studio", handle) as ws:
        a = ws.add_variant(plain_variant(handle, "a"))
        b = ws.add_variant(plain_variant(handle, "b"), parent=a)
        c = ws.add_variant(plain_variant(handle, "c"), parent=b)
        ws.add_metrics(b, [Metric("top1", 0.5, "measured", "x", n_samples=3)])
        file_b = ws.variant(b).path
        ws.delete(b)
        assert not file_b.exists()
        assert ws.tree() == {None: [a], a: [c], c: []}
        assert ws.metrics(b) == []
        with pytest.raises(WorkspaceError):
            ws.add_variant(plain_variant(handle, "d"), parent=b)
        with pytest.raises(WorkspaceError):
            ws.finish_job("nope", "finished")


def test_create_refuses_existing_and_in_memory_source_is_kept(handle, tmp_path):
    path = tmp_path / "p.studio"
    Workspace.create(path, handle).close()
    with pytest.raises(WorkspaceError, match="already exists"):
        Workspace.create(path, handle)
    mem = load_model(handle.source_path)
    mem.source_path = None
    with Workspace.create(tmp_path / "mem.studio", mem) as ws:
        assert ws.messages == [] and ws.source_path.exists()
        x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
        from studio.core.evaluate import make_session

        out = make_session(ws.load_source().proto).run(None, {"input": x})[0]
        ref = make_session(handle.proto).run(None, {"input": x})[0]
        np.testing.assert_array_equal(out, ref)


def test_close_marks_own_running_jobs_and_commits_each_call(handle, tmp_path):
    path = tmp_path / "p.studio"
    ws = Workspace.create(path, handle)
    job = ws.start_job("compress", {"recipe": Recipe(name="x")})
    # Autosave: a second (read-only) connection sees the row before close.
    with Workspace.open(path, read_only=True) as ro:
        assert ro.job(job).status == "running"
    t0 = time.time()
    ws.close()
    with Workspace.open(path) as ws2:
        j = ws2.job(job)
        assert j.status == "interrupted" and j.ended >= t0
