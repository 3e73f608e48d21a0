"""Auto-compress on the digits CNN with real ORT measurements; targets, front, cancel, pools."""

from __future__ import annotations

import importlib.util

import pytest

from studio.core.errors import StudioError
from studio.core.evaluate import calibration_subset, load_npz
from studio.core.jobs import JobContext, drive
from studio.core.model import load_model
from studio.core.parallel import TaskFailure, make_pool
from studio.core.search import auto_compress, pareto_front, parse_target
from studio.core.sensitivity import parse_settings, sweep

SETTINGS = "channels:0.5 svd:0.125 int8 kmeans:4"


@pytest.fixture(scope="module")
def digits(digits_onnx, digits_calib, digits_eval):
    h = load_model(digits_onnx)
    calib = calibration_subset(load_npz(digits_calib), 64)
    table = drive(sweep(h, calib, settings=parse_settings(SETTINGS)))
    return h, calib, load_npz(digits_eval), table


def test_parse_target_forms():
    assert parse_target("size=10x").ratio == 10
    assert parse_target("size<=2MB").value == 2e6
    assert parse_target("size<=ort-int8").ref == "ort-int8"
    t = parse_target("latency=1.3x", batch_size=8)
    assert t.kind == "latency" and t.ratio == 1.3 and t.batch_size == 8
    assert parse_target("latency<=5ms").value == 5
    assert parse_target("macs<=50%").ratio == pytest.approx(2)
    assert parse_target("size=10x").limit(1000.0, {}) == 100.0
    for bad in ("speed=2x", "size=abc", "size=-3x"):
        with pytest.raises(StudioError):
            parse_target(bad)


def test_pareto_front_is_non_dominated():
    pts = [(0, 10, 0.0, 0), (1, 5, 0.02, 0), (2, 6, 0.03, 0), (3, 5, 0.01, 0), (4, 20, 0.0, 0)]
    assert pareto_front(pts) == [3, 0]


def test_search_meets_size_target_and_keeps_every_candidate(digits):
    h, calib, ev, table = digits
    payloads = []
    r = drive(
        auto_compress(
            h, calib, [parse_target("size=8x")], max_drop=0.01, heldout=ev, table=table, max_evals=5
        ),
        JobContext(payloads.append),
    )
    assert r.reached, r.message
    assert r.best.value("size_bytes") <= h.proto.ByteSize() / 8  # measured, serialized bytes
    assert r.best.metrics["size_bytes"].kind == "measured"
    assert r.best.metrics["calib_drop"].n_samples == 64
    assert r.best.metrics["heldout_top1"].n_samples == 360
    cands = [p.payload["candidate"] for p in payloads if p.payload and p.payload.get("type") == "candidate"]
    assert [c["id"] for c in cands] == sorted(c.id for c in r.candidates)
    # the front is non-dominated over (measured size, calibration loss)
    front = r.front_candidates()
    assert front
    for a in front:
        for b in r.candidates:
            if b.error is None and b.id != a.id:
                assert not (b.value("size_bytes") < a.value("size_bytes") and b.loss < a.loss)
    d = r.to_dict()
    assert d["best"] == r.best.id and len(d["candidates"]) == len(r.candidates)


def test_unreachable_target_returns_closest_plan(digits):
    h, calib, _, table = digits
    r = drive(auto_compress(h, calib, [parse_target("size=500x")], max_drop=0.01, table=table, max_evals=3))
    assert not r.reached and r.best is not None
    assert "not reached" in r.message or "no measured plan" in r.message
    assert r.best.violation > 0


def test_cancel_keeps_finished_candidates(digits):
    from studio.core.errors import JobCancelled

    h, calib, _, table = digits
    # Iterated by hand with its ctx: cancel returns the partial result.
    ctx = JobContext()
    gen = auto_compress(h, calib, [parse_target("size=8x")], table=table, max_evals=6, ctx=ctx)
    seen = []
    try:
        while True:
            p = next(gen)
            if p.payload and p.payload.get("type") == "candidate":
                seen.append(p.payload["candidate"]["id"])
                ctx.cancel()
    except StopIteration as stop:
        r = stop.value
    assert r.cancelled and r.message.startswith("cancelled")
    assert [c.id for c in r.candidates][: len(seen)] == seen and len(seen) >= 1
    # Under drive() a cancel raises, and every finished candidate has already gone out as a payload.
    ctx2, got = JobContext(), []

    def on(p):
        if p.payload and p.payload.get("type") == "candidate":
            got.append(p.payload["candidate"])
            ctx2.cancel()

    ctx2._on_progress = on
    with pytest.raises(JobCancelled):
        drive(auto_compress(h, calib, [parse_target("size=8x")], table=table, max_evals=6, ctx=ctx2), ctx2)
    assert got and "size_bytes" in got[0]["metrics"]


def _square(x):
    return x * x


def _boom(x):
    raise ValueError(f"bad {x}")


def test_process_pool_and_failures():
    with make_pool(2) as pool:
        assert pool.kind == "process"
        got = dict(pool.imap_unordered(_square, [(i,) for i in range(4)]))
        assert got == {0: 0, 1: 1, 2: 4, 3: 9}
        ((i, res),) = list(pool.imap_unordered(_boom, [(7,)]))
        assert isinstance(res, TaskFailure) and "bad 7" in res.message


def test_unreachable_ray_address_falls_back_to_local():
    pool = make_pool(2, ray="127.0.0.1:9")  # discard port: nothing answers
    assert pool.kind == "process" and pool.warnings
    pool.close()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
def test_sweep_on_local_ray(digits):
    h, calib, _, _ = digits
    pool = make_pool(2, ray="local")
    assert pool.kind == "ray", pool.warnings
    t = drive(
        sweep(h, calib, settings=parse_settings("kmeans:4"), layers=["/fc1/Gemm", "/fc2/Gemm"], pool=pool)
    )
    assert t.drop("/fc1/Gemm", "kmeans:4") is not None
    assert "Ray" in t.cost["pool"]


@pytest.mark.reliability
@pytest.mark.nlp
def test_minilm_latency_and_ort_size(minilm_paths):
    """MiniLM: ≥1.3× faster (interleaved, batch 8), cosine ≥ 0.99 (calibration and held-out) and
    no larger than ORT's quantize_dynamic defaults, all measured in one run. Needs the
    Lagrangian allocation (int8 on robust layers, same-size k-means 8-bit on sensitive ones,
    4-bit on a few attention layers to pay for per-channel / per-row scales)."""
    from studio.core.evaluate import load_npz as ld

    onnx_path, npz = minilm_paths
    h = load_model(onnx_path)
    data = ld(npz)
    # 128 calibration sentences: channel-pruning refits on fewer tokens overfit (held-out drops)
    calib = data.subset(range(128))
    held = data.subset(range(128, len(data)))
    settings = parse_settings("channels:0.25 int8 kmeans:8,4")
    with make_pool(1) as pool:
        r = drive(
            auto_compress(
                h,
                calib,
                [parse_target("latency=1.3x", batch_size=8), parse_target("size<=ort-int8")],
                max_drop=0.01,
                heldout=held,
                settings=settings,
                pool=pool,
                max_evals=8,
            )  # fmt: skip
        )
    assert r.reached, r.message
    b = r.best
    assert b.value("size_bytes") <= r.limits["size<=ort-int8"]
    assert b.value("latency_ratio") <= 1 / 1.3
    assert 1 - b.loss >= 0.99
    assert b.value("heldout_cosine") >= 0.99  # per real token (attention mask), held-out sentences
