"""Measure jobs in a spawned subprocess (studio.core.measure_job): real digits model, real ORT
runs, small samples. The child returns only small data; progress streams back; cancel kills the
child and leaves no file; a workspace stores the child's file without parsing the model."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from studio.core import measure_job
from studio.core.errors import JobCancelled
from studio.core.jobs import JobContext, drive, run_in_subprocess
from studio.core.metrics import Metric
from studio.core.model import load_model
from studio.core.recipe import LayerPlan, Recipe, Step

FC1 = "/fc1/Gemm"
OPTIONS = {"eval_samples": 96, "calib_samples": 32, "bench_runs": 3, "bench_warmup": 1}


def _recipe() -> Recipe:
    return Recipe(layers={FC1: LayerPlan(prune=Step(technique="channels", params={"ratio": 0.5}))})


def test_apply_and_measure_in_subprocess_returns_small_data(tmp_path, digits_onnx, digits_eval, digits_calib):
    out = tmp_path / "variants" / "v1.onnx"
    seen = []
    args = (
        str(digits_onnx),
        None,
        _recipe().dump("yaml"),
        str(digits_eval),
        str(digits_calib),
        str(out),
        OPTIONS,
    )
    res = drive(run_in_subprocess(measure_job.apply_and_measure, *args), JobContext(seen.append))
    # Progress came back live from the child, in order, ending at 1.
    fractions = [p.fraction for p in seen if p.fraction >= 0]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("benchmarking" in p.message for p in seen)
    # Only small, plain data crossed back: no ModelProto.
    assert len(pickle.dumps(res)) < 20_000
    assert Path(res["path"]) == out and out.exists()
    assert not any(p.name.startswith(measure_job.PRIVATE_PREFIX) for p in out.parent.iterdir())
    ms = {d["name"]: Metric.from_dict(d) for d in res["metrics"]}
    assert ms["top1"].kind == "measured" and ms["top1"].n_samples == 96
    assert ms["size_bytes"].value == out.stat().st_size
    assert ms["size_bytes"].value < Path(digits_onnx).stat().st_size  # half of fc1 is gone
    assert ms["latency_p50_ms"].n_samples == 3
    assert res["provenance"]["steps"][0]["technique"] == "channels"
    # The file holds the pruned model: fc1 lost half its output rows.
    from studio.core.graph import analyze

    before = analyze(load_model(digits_onnx).proto).by_name()[FC1].weight_shape
    after = analyze(load_model(out).proto).by_name()[FC1].weight_shape
    assert after[0] * 2 == before[0]


def test_cancel_terminates_child_and_leaves_no_file(tmp_path, digits_onnx, digits_eval):
    out = tmp_path / "v.onnx"
    opts = {**OPTIONS, "bench_runs": 10_000_000}
    ctx = JobContext()

    def on_progress(p):
        if p.fraction > 0.72:  # inside the benchmark: the scratch file exists by now
            assert measure_job.scratch_dir(out).exists()
            ctx.cancel()

    ctx._on_progress = on_progress
    args = (str(digits_onnx), None, _recipe().dump("yaml"), str(digits_eval), None, str(out), opts)
    with pytest.raises(JobCancelled):
        drive(run_in_subprocess(measure_job.apply_and_measure, *args, ctx=ctx), ctx)
    measure_job.cleanup_scratch(out)
    assert list(tmp_path.iterdir()) == []


def test_measure_model_fidelity_against_reference_and_bench_only(tmp_path, digits_onnx, digits_calib):
    out = tmp_path / "v.onnx"
    # In-process call of the same child function (it is a plain function of a JobContext).
    measure_job.apply_and_measure(
        JobContext(),
        str(digits_onnx),
        None,
        _recipe().dump("yaml"),
        None,
        str(digits_calib),
        str(out),
        OPTIONS,
    )
    dicts = drive(
        run_in_subprocess(
            measure_job.measure_model,
            str(out),
            None,
            str(digits_calib),
            OPTIONS,
            reference_path=str(digits_onnx),
        )
    )
    ms = {d["name"]: Metric.from_dict(d) for d in dicts}
    # No labels in the calibration file: quality is agreement with the original model.
    assert ms["top1_agreement"].kind == "fidelity" and 0.5 < ms["top1_agreement"].value <= 1.0
    assert ms["top1_agreement"].n_samples == 96  # eval_samples of the 128 in the file
    assert "latency_p50_ms" in ms
    only_bench = measure_job.measure_model(JobContext(), str(out), None, None, OPTIONS, evaluate_model=False)
    assert {d["name"] for d in only_bench} == {"latency_p50_ms", "latency_p90_ms"}


def test_model_spec_and_synthetic_data_agree(digits_onnx):
    handle = load_model(digits_onnx)
    path, factory = measure_job.model_spec(handle)
    assert Path(path) == Path(digits_onnx) and factory is None
    handle.source_path = handle.onnx_path = None
    assert measure_job.model_spec(handle) is None  # in memory only: the GUI runs it in a thread
    # Parent and child build the same random inputs when the user gave no data.
    a = measure_job.eval_data(load_model(digits_onnx), None, {"synthetic_samples": 4})
    b = measure_job.eval_data(load_model(digits_onnx), None, {"synthetic_samples": 4})
    assert (a.inputs["input"] == b.inputs["input"]).all() and a.labels is None


def test_workspace_stores_file_variant_without_parsing_it(tmp_path, digits_onnx, digits_calib):
    from studio.core.workspace import Workspace

    out = tmp_path / "v.onnx"
    res = measure_job.apply_and_measure(
        JobContext(),
        str(digits_onnx),
        None,
        _recipe().dump("yaml"),
        None,
        str(digits_calib),
        str(out),
        OPTIONS,
    )
    metrics = [Metric.from_dict(d) for d in res["metrics"]]
    v = measure_job.FileVariant(res["path"], _recipe(), res["provenance"], metrics=metrics)
    with Workspace.create(tmp_path / "p.studio", load_model(digits_onnx)) as ws:
        vid = ws.add_variant(v, "v1", file=v.path)
        assert not v.loaded  # the model was linked/copied, never parsed here
        rec = ws.variant(vid)
        assert rec.path.read_bytes() == out.read_bytes()
        assert rec.metric("top1_agreement").value == pytest.approx(
            next(m.value for m in metrics if m.name == "top1_agreement")
        )
        # The lazy proto loads on first use (a worker's diff/export) and equals the file.
        assert v.proto.ByteSize() == len(out.read_bytes()) and v.loaded
