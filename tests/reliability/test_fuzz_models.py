"""Bad and odd ONNX models: refused with a StudioError (in process and through the CLI), never
another exception, a traceback, a hang or a written file; valid-but-odd models analyse fine."""

from __future__ import annotations

import pytest

from studio.core.errors import StudioError
from tests.reliability import corpus
from tests.reliability.corpus import MODEL_CASES, assert_refused_cleanly, build_case, cli, files_under

BAD = [c for c in MODEL_CASES if c.expect == "error"]
ODD = [c for c in MODEL_CASES if c.expect == "odd"]
# One per family for the default suite; the reliability suite runs every case through the CLI.
CLI_SAMPLE = {"truncated", "cycle", "external symlink escape", "huge initializer dims"}


def test_corpus_is_large_enough():
    names = [(c.kind, c.name) for c in corpus.ALL_CASES]
    assert len(set(names)) == len(names)
    assert len(names) >= 40


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_model_is_a_studio_error(case, tmp_path):
    path = build_case(case, tmp_path)
    done: list[str] = []
    with pytest.raises(StudioError) as ei:
        done = corpus.exercise_model(path)
    corpus.record("model")
    msg = str(ei.value)
    assert msg and "\n" not in msg, msg
    # Structural damage is caught when the file is opened, before anything runs on it.
    assert done == [], f"{case.name}: got past {done} before failing with {msg}"


@pytest.mark.parametrize("case", ODD, ids=[c.name for c in ODD])
def test_odd_model_opens_and_analyses(case, tmp_path):
    from studio.core.graph import analyze
    from studio.core.model import load_model

    path = build_case(case, tmp_path)
    h = load_model(path)
    an = analyze(h.proto)
    assert an.total_weight_bytes >= 0 and an.opsets
    try:
        corpus.exercise_model(path)
    except StudioError as e:  # later steps may refuse it, but only as a user error
        assert "\n" not in str(e)
    corpus.record("model")


def test_odd_models_keep_their_layers(tmp_path):
    """Spot checks that the odd models are understood, not just survived."""
    from studio.core.graph import analyze
    from studio.core.model import load_model

    by_name = {c.name: c for c in ODD}
    const = load_model(build_case(by_name["Constant-node weights"], tmp_path / "c"))
    assert [la.op_type for la in analyze(const.proto).layers] == ["Conv"]
    wrong = load_model(build_case(by_name["wrong declared output shape"], tmp_path / "w"))
    assert any("declares shape" in w for w in wrong.warnings)
    dup = load_model(build_case(by_name["duplicate node names"], tmp_path / "d"))
    assert len({n.name for n in dup.proto.graph.node}) == len(dup.proto.graph.node)
    for opset in ("opset 11", "opset 21"):
        h = load_model(build_case(by_name[opset], tmp_path / opset.replace(" ", "")))
        assert [la.name for la in analyze(h.proto).layers] == ["fc/MatMul"]


def _cli_model_case(case, tmp_path):
    path = build_case(case, tmp_path / "in")
    recipe = tmp_path / "in" / "r.yaml"
    recipe.write_text("defaults: {quantize: int8_dynamic}\n")
    work = tmp_path / "work"
    work.mkdir()
    before = files_under(work)
    proc = cli(["compress", str(path), "--recipe", str(recipe), "-o", str(work / "out.onnx")], work)
    corpus.record("cli")
    if case.expect == "error":
        line = assert_refused_cleanly(proc, work, before)
        assert len(line) < 600
    else:
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.returncode in (0, 2), proc.stderr[-2000:]
        if proc.returncode == 2:
            assert_refused_cleanly(proc, work, before)
        ins = cli(["inspect", str(path)], work)
        assert ins.returncode == 0 and "Traceback" not in ins.stderr, ins.stderr[-2000:]


@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.name in CLI_SAMPLE], ids=lambda c: c.name)
def test_cli_refuses_bad_models_sample(case, tmp_path):
    _cli_model_case(case, tmp_path)


@pytest.mark.reliability
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.name for c in MODEL_CASES])
def test_cli_every_model_case(case, tmp_path):
    _cli_model_case(case, tmp_path)
