"""Bad PyTorch files, datasets and recipes: each is a StudioError in process and one line + exit 2
through the CLI; pickled code never runs; a Hypothesis pass over random recipe dicts."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.core.errors import DatasetError, ModelLoadError, RecipeError, StudioError
from tests.reliability import corpus
from tests.reliability.corpus import (
    DATASET_CASES,
    DIGITS,
    RECIPE_CASES,
    TORCH_CASES,
    assert_refused_cleanly,
    build_case,
    cli,
    files_under,
    marker_path,
)


@pytest.fixture(scope="module")
def digits():
    from studio.core.graph import analyze
    from studio.core.model import load_model

    h = load_model(DIGITS)
    return h, analyze(h.proto, with_stats=False)


# ------------------------------------------------------------------------------- torch files


@pytest.mark.torch
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c.name for c in TORCH_CASES])
def test_bad_torch_file_is_a_model_load_error(case, tmp_path):
    path = build_case(case, tmp_path)
    marker = marker_path(path.parent)
    with pytest.raises(ModelLoadError) as ei:
        corpus.exercise_model(path, factory=case.factory)
    corpus.record("torch")
    assert "\n" not in str(ei.value)
    assert not marker.exists(), "code from the pickle ran"


# ------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("case", DATASET_CASES, ids=[c.name for c in DATASET_CASES])
def test_bad_dataset_is_a_dataset_error(case, tmp_path, digits):
    from studio.core.evaluate import evaluate, load_dataset

    path = build_case(case, tmp_path)
    with pytest.raises(DatasetError) as ei:
        evaluate(digits[0].proto, load_dataset(path))
    corpus.record("dataset")
    assert "\n" not in str(ei.value)


def test_good_dataset_still_evaluates(digits, digits_eval):
    """The data checks refuse bad data, not the real thing (accuracy on the 360 held-out digits)."""
    from studio.core.evaluate import evaluate, load_dataset

    ms = {m.name: m for m in evaluate(digits[0].proto, load_dataset(digits_eval))}
    assert ms["top1"].kind == "measured" and ms["top1"].n_samples == 360
    assert ms["top1"].value > 0.95


# ------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c.name for c in RECIPE_CASES])
def test_bad_recipe_is_a_recipe_error(case, tmp_path, digits):
    from studio.core.jobs import drive
    from studio.core.pipeline import compress, resolve_plan
    from studio.core.recipe import Recipe

    path = build_case(case, tmp_path)
    with pytest.raises(RecipeError) as ei:
        recipe = Recipe.load(path)
        resolve_plan(digits[1], recipe)
        drive(compress(digits[0], recipe))
    corpus.record("recipe")
    assert "\n" not in str(ei.value) and len(str(ei.value)) < 600


# ------------------------------------------------------------------------------- CLI


def _cli_case(case, tmp_path, digits_path, eval_path):
    path = build_case(case, tmp_path / "in")
    work = tmp_path / "work"
    work.mkdir()
    before = files_under(work)
    recipe = tmp_path / "in" / "int8.yaml"
    recipe.write_text("defaults: {quantize: int8_dynamic}\n")
    out = str(work / "out.onnx")
    if case.kind == "torch":
        args = ["compress", str(path), "--recipe", str(recipe), "-o", out]
        args += ["--factory", case.factory] if case.factory else []
    elif case.kind == "dataset":
        args = ["compress", str(digits_path), "--recipe", str(recipe), "-o", out, "--data", str(path)]
    else:
        args = ["compress", str(digits_path), "--recipe", str(path), "-o", out, "--data", str(eval_path)]
    proc = cli(args, work)
    corpus.record("cli")
    assert_refused_cleanly(proc, work, before)
    assert not marker_path(path.parent).exists(), "code from the pickle ran"


CLI_SAMPLE = {"pickle __reduce__ (torch.save zip)", "NaN values", "YAML alias bomb (9^10 values)"}
INPUT_CASES = TORCH_CASES + DATASET_CASES + RECIPE_CASES


@pytest.mark.parametrize("case", [c for c in INPUT_CASES if c.name in CLI_SAMPLE], ids=lambda c: c.name)
def test_cli_refuses_bad_inputs_sample(case, tmp_path, digits_onnx, digits_eval):
    _cli_case(case, tmp_path, digits_onnx, digits_eval)


@pytest.mark.reliability
@pytest.mark.parametrize("case", INPUT_CASES, ids=[f"{c.kind}-{c.name}" for c in INPUT_CASES])
def test_cli_every_input_case(case, tmp_path, digits_onnx, digits_eval):
    _cli_case(case, tmp_path, digits_onnx, digits_eval)


# ------------------------------------------------------------------------------- Hypothesis

STAGE_KEYS = ["decompose", "prune", "quantize", "encode", "finetune", "sparsify"]
TECHNIQUES = ["svd", "tucker", "channels", "magnitude", "int8_dynamic", "int8_static", "int4_weight"]
TECHNIQUES += ["fp16", "kmeans", "none", "nope", ""]
PARAM_KEYS = ["ratio", "rank_ratio", "bits", "energy", "per_channel", "granularity", "min_rank", "x"]
LAYER_KEYS = ["/fc1/Gemm", "/fc2/Gemm", "/conv1/conv1.0/Conv", "/conv*", "*", "/nope", "", "?"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(TECHNIQUES),
)
params = st.dictionaries(st.sampled_from(PARAM_KEYS), scalars, max_size=3)
step = st.one_of(
    st.sampled_from(TECHNIQUES),
    st.fixed_dictionaries({"technique": st.sampled_from(TECHNIQUES)}, optional={"params": params}),
    st.dictionaries(st.sampled_from(TECHNIQUES), st.one_of(params, st.none()), min_size=1, max_size=1),
    scalars,
    st.lists(scalars, max_size=2),
)
plan = st.one_of(st.dictionaries(st.sampled_from(STAGE_KEYS), step, max_size=3), scalars)
recipe_dicts = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.integers(-2, 3), scalars),
        "name": scalars,
        "defaults": plan,
        "layers": st.one_of(st.dictionaries(st.sampled_from(LAYER_KEYS), plan, max_size=3), scalars),
        "calibration": st.one_of(
            st.fixed_dictionaries({}, optional={"n_samples": scalars, "seed": scalars, "data": scalars}),
            scalars,
        ),
        "extra": scalars,
    },
)


def _property(d, analysis):
    from studio.core.pipeline import estimate_recipe
    from studio.core.recipe import Recipe

    corpus.record("hypothesis recipe")
    try:
        r = Recipe.from_dict(d)
    except RecipeError:
        return
    assert isinstance(r, Recipe)
    # A recipe that parsed can be written and read back, and resolved against a real model.
    assert Recipe.loads(r.dump("yaml")) == r
    yaml.safe_load(r.dump("yaml"))
    r.summary()
    try:
        est = estimate_recipe(analysis, r)
    except StudioError:
        return
    assert est.kind == "estimated" and est.weight_bytes >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=recipe_dicts)
def test_random_recipe_dicts_are_recipes_or_recipe_errors(d, digits):
    _property(d, digits[1])


@pytest.mark.reliability
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=recipe_dicts)
def test_random_recipe_dicts_many(d, digits):
    _property(d, digits[1])
