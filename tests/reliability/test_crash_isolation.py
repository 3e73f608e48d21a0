"""A technique that segfaults, calls os._exit or hogs memory, run through the real pipeline in a
subprocess job: the job fails with JobCrashedError; this process and an open workspace survive."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from studio.core.errors import JobCrashedError
from studio.core.jobs import Progress, drive, run_in_subprocess
from tests.reliability import corpus

CRASH_PLUGIN = Path(__file__).resolve().parents[1] / "fixtures" / "crash_plugin"
MEMORY_LIMIT_BYTES = 4 << 30  # address space: the interpreter + ORT need ~1-2 GiB of it


def compress_job(ctx, model_path: str, recipe_text: str) -> dict:
    """Runs in the child: open the model, apply the recipe with the real pipeline."""
    from studio.core.model import load_model
    from studio.core.pipeline import compress
    from studio.core.recipe import Recipe

    handle = load_model(model_path)
    variant = drive(compress(handle, Recipe.loads(recipe_text), ctx=ctx), ctx)
    return {"model": variant.proto.SerializeToString(), "recipe": recipe_text, "prov": variant.provenance}


@pytest.fixture
def crash_plugin(monkeypatch):
    """Put the fixture's package + *.dist-info on sys.path: importlib.metadata finds its entry
    points there, and a spawned child inherits the path."""
    monkeypatch.syspath_prepend(str(CRASH_PLUGIN))
    from studio.plugin_api.registry import Registry

    names = Registry().names()
    assert {"crash_segfault", "crash_exit", "crash_hog"} <= set(names)
    return CRASH_PLUGIN


@pytest.fixture
def workspace(tmp_path, digits_onnx):
    from studio.core.model import load_model
    from studio.core.workspace import Workspace

    ws = Workspace.create(tmp_path / "crash.studio", load_model(digits_onnx))
    yield ws
    ws.close()


def _run(model: Path, recipe: str, **kw):
    seen: list[Progress] = []
    gen = run_in_subprocess(compress_job, str(model), recipe, timeout_s=300, **kw)
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        return stop.value, seen


def _add(ws, result) -> str:
    from studio.core.pipeline import Variant
    from studio.core.recipe import Recipe

    proto = onnx.load_from_string(result["model"])
    return ws.add_variant(Variant(proto, Recipe.loads(result["recipe"]), result["prov"]))


@pytest.mark.parametrize(
    "technique, reason",
    [("crash_segfault", "SIGSEGV"), ("crash_exit", "exited with code 7")],
)
def test_crashing_technique_is_a_failed_job(crash_plugin, workspace, digits_onnx, technique, reason):
    ok, _ = _run(digits_onnx, "defaults: {quantize: int8_dynamic}\n")
    before = _add(workspace, ok)
    with pytest.raises(JobCrashedError) as ei:
        _run(digits_onnx, f"layers:\n  /fc2/Gemm: {{encode: {technique}}}\n")
    corpus.record("crash")
    msg = str(ei.value)
    assert reason in msg and "crashed" in msg and "\n" not in msg
    # This process and the open workspace are unharmed: read, write, and run another job.
    assert [v.id for v in workspace.variants()] == [before]
    again, progress = _run(digits_onnx, "defaults: {quantize: fp16}\n")
    assert progress and progress[-1].fraction == 1.0
    after = _add(workspace, again)
    assert {v.id for v in workspace.variants()} == {before, after}
    assert workspace.load_variant_proto(after).graph.node


def test_memory_hog_fails_the_job_not_the_machine(crash_plugin, digits_onnx):
    with pytest.raises(JobCrashedError) as ei:
        _run(
            digits_onnx,
            "layers:\n  /fc2/Gemm: {encode: crash_hog}\n",
            memory_limit_bytes=MEMORY_LIMIT_BYTES,
        )
    corpus.record("crash")
    msg = str(ei.value)
    assert "MemoryError" in msg or "SIGKILL" in msg, msg
    assert "no memory limit was enforced" not in msg
    # Still alive and able to work.
    ok, _ = _run(digits_onnx, "defaults: {quantize: int8_dynamic}\n", memory_limit_bytes=MEMORY_LIMIT_BYTES)
    assert len(ok["model"]) > 0


def test_crash_plugin_is_invisible_without_its_dist_info():
    """Only installed entry points register techniques: the fixture is not found by default."""
    from studio.plugin_api.registry import Registry

    assert not {"crash_segfault", "crash_exit", "crash_hog"} & set(Registry().names())
