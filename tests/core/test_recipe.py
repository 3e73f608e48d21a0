"""Recipes: YAML/TOML round trips, defaults -> globs (file order) -> exact names, null disables,
errors that name the layer and field, newer versions refused, params checked by the technique."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from studio.core.errors import RecipeError
from studio.core.graph import analyze
from studio.core.model import load_model
from studio.core.pipeline import estimate_recipe, resolve_plan
from studio.core.recipe import RECIPE_VERSION, LayerPlan, Recipe, Step
from studio.plugin_api.registry import GROUP, Registry
from studio.plugin_api.technique import YES, BaseTechnique, LayerEstimate, Params, Stage, no

LAYERS = [
    "/conv1/conv1.0/Conv",
    "/conv2/conv2.0/Conv",
    "/conv3/conv3.0/Conv",
    "/fc1/Gemm",
    "/fc2/Gemm",
]


# Two tiny techniques defined here, so these tests pin the recipe semantics independently of
# the built-in plugins; registered through real EntryPoint objects.
class HalveParams(Params):
    ratio: float = Field(0.5, gt=0, lt=1)


class Halve(BaseTechnique):
    name = "halve"
    stage = Stage.PRUNE
    Params = HalveParams

    def applies_to(self, layer):
        return YES if layer.op_type == "Gemm" else no("only Gemm layers")

    def estimate(self, layer, params, before):
        keep = 1 - params.ratio
        return LayerEstimate(
            int(before.params * keep), int(before.macs * keep), int(before.weight_bytes * keep)
        )


class BitsParams(Params):
    bits: int = 8

    def model_post_init(self, _):
        if self.bits not in (4, 8):
            raise ValueError(f"bits={self.bits} unsupported; use 4 or 8")


class Bits(BaseTechnique):
    name = "bits"
    stage = Stage.QUANTIZE
    Params = BitsParams

    def applies_to(self, layer):
        return YES

    def estimate(self, layer, params, before):
        return LayerEstimate(before.params, before.macs, before.params * params.bits // 8)


@pytest.fixture(scope="module")
def registry():
    return Registry(
        [
            EntryPoint("halve", f"{__name__}:Halve", GROUP),
            EntryPoint("bits", f"{__name__}:Bits", GROUP),
        ]
    )


@pytest.fixture(scope="module")
def analysis(digits_onnx):
    return analyze(load_model(digits_onnx).proto, with_stats=False)


MIXED = """
version: 1
name: mixed
calibration: {data: calib.npz, n_samples: 64, seed: 3}
defaults:
  quantize: {bits: {bits: 8}}
layers:
  "/conv*":
    quantize: {bits: {bits: 4}}
  "/conv1/*":
    quantize: null
  /fc1/Gemm:
    prune: {technique: halve, params: {ratio: 0.75}}
  /fc2/Gemm:
    quantize: null
"""


def test_resolution_order_defaults_globs_exact_and_null(registry):
    r = Recipe.loads(MIXED)
    plans = r.resolve(LAYERS)
    assert "/conv1/conv1.0/Conv" not in plans  # the later glob's null disables the earlier glob
    assert plans["/conv2/conv2.0/Conv"].quantize == Step(technique="bits", params={"bits": 4})
    assert plans["/fc1/Gemm"].quantize.params == {"bits": 8}  # default kept, prune added
    assert plans["/fc1/Gemm"].prune.params == {"ratio": 0.75}
    assert "/fc2/Gemm" not in plans  # explicit null on the only stage -> no plan
    assert [s for s, _ in plans["/fc1/Gemm"].steps()] == ["prune", "quantize"]


def test_globs_apply_in_file_order():
    a = Recipe.from_dict({"layers": {"*": {"quantize": "bits"}, "/fc*": {"quantize": None}}})
    b = Recipe.from_dict({"layers": {"/fc*": {"quantize": None}, "*": {"quantize": "bits"}}})
    assert "/fc1/Gemm" not in a.resolve(LAYERS)
    assert "/fc1/Gemm" in b.resolve(LAYERS)


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_round_trip(fmt, tmp_path):
    r = Recipe.loads(MIXED)
    again = Recipe.loads(r.dump(fmt), fmt="toml" if fmt == "toml" else "yaml")
    assert again == r
    assert again.resolve(LAYERS) == r.resolve(LAYERS)
    path = r.save(tmp_path / f"r.{fmt}")
    assert Recipe.load(path) == r
    assert not list(tmp_path.glob(".*.tmp"))  # atomic save leaves no temp file


def test_toml_null_is_technique_none():
    text = Recipe.loads(MIXED).dump("toml")
    assert 'technique = "none"' in text
    r = Recipe.loads('[layers."/fc2/Gemm"]\nquantize = "none"\n[defaults]\nquantize = "bits"\n', fmt="toml")
    assert "/fc2/Gemm" not in r.resolve(LAYERS)
    assert "/fc1/Gemm" in r.resolve(LAYERS)


def test_shorthands_are_equivalent():
    a = Recipe.from_dict({"layers": {"/fc1/Gemm": {"prune": {"halve": {"ratio": 0.3}}}}})
    b = Recipe.from_dict(
        {"layers": {"/fc1/Gemm": {"prune": {"technique": "halve", "params": {"ratio": 0.3}}}}}
    )
    c = Recipe.from_dict({"layers": {"/fc1/Gemm": {"quantize": "bits"}}})
    assert a == b
    assert c.layers["/fc1/Gemm"].quantize == Step(technique="bits")


def test_unknown_exact_layer_names_it():
    r = Recipe.from_dict({"layers": {"/fc3/Gemm": {"quantize": "bits"}}})
    with pytest.raises(RecipeError) as ei:
        r.resolve(LAYERS)
    assert ei.value.layer == "/fc3/Gemm"
    assert "no such layer" in str(ei.value)
    # A glob that matches nothing is not an error (it may target another model's layers).
    assert Recipe.from_dict({"layers": {"/lstm*": {"quantize": "bits"}}}).resolve(LAYERS) == {}


@pytest.mark.parametrize(
    "recipe, layer, field",
    [
        ({"layers": {"/fc1/Gemm": {"prnue": "halve"}}}, "/fc1/Gemm", "prnue"),
        (
            {"layers": {"/fc1/Gemm": {"prune": {"technique": "halve", "parms": {}}}}},
            "/fc1/Gemm",
            "prune.parms",
        ),
        ({"defaults": {"quantize": 3}}, "defaults", "quantize"),
        ({"calibration": {"n_samples": 0}}, None, "calibration.n_samples"),
        ({"colour": "red"}, None, "colour"),
    ],
)
def test_schema_errors_name_layer_and_field(recipe, layer, field):
    with pytest.raises(RecipeError) as ei:
        Recipe.from_dict(recipe, source="my.yaml")
    assert ei.value.layer == layer
    assert ei.value.field == field
    assert "my.yaml" in str(ei.value)
    assert "\n" not in str(ei.value)  # one line for the CLI


def test_newer_version_is_refused(tmp_path):
    p = tmp_path / "future.yaml"
    p.write_text(f"version: {RECIPE_VERSION + 1}\nlayers: {{}}\n")
    with pytest.raises(RecipeError, match="newer than this studio"):
        Recipe.load(p)
    with pytest.raises(RecipeError, match="version"):
        Recipe.from_dict({"version": 0})


def test_unreadable_files(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        Recipe.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [unclosed\n")
    with pytest.raises(RecipeError, match="cannot parse"):
        Recipe.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        Recipe.load(lst)
    toml = tmp_path / "bad.toml"
    toml.write_text("version = = 1\n")
    with pytest.raises(RecipeError, match="cannot parse"):
        Recipe.load(toml)


def test_params_checked_by_technique_name_layer_and_field(analysis, registry):
    bad_ratio = Recipe.from_dict({"layers": {"/fc1/Gemm": {"prune": {"halve": {"ratio": 1.5}}}}})
    with pytest.raises(RecipeError) as ei:
        resolve_plan(analysis, bad_ratio, registry)
    assert (ei.value.layer, ei.value.field) == ("/fc1/Gemm", "prune.params.ratio")
    bad_bits = Recipe.from_dict({"layers": {"/fc2/Gemm": {"quantize": {"bits": {"bits": 3}}}}})
    with pytest.raises(RecipeError, match="bits=3 unsupported") as ei:
        resolve_plan(analysis, bad_bits, registry)
    assert ei.value.layer == "/fc2/Gemm"
    unknown = Recipe.from_dict({"layers": {"/fc2/Gemm": {"quantize": "int3_magic"}}})
    with pytest.raises(RecipeError, match="unknown technique 'int3_magic'") as ei:
        resolve_plan(analysis, unknown, registry)
    assert ei.value.field == "quantize.technique"
    wrong_stage = Recipe.from_dict({"layers": {"/fc2/Gemm": {"quantize": "halve"}}})
    with pytest.raises(RecipeError, match="belongs to stage 'prune'"):
        resolve_plan(analysis, wrong_stage, registry)


def test_unsupported_layer_explicit_is_error_default_is_skipped(analysis, registry):
    explicit = Recipe.from_dict({"layers": {"/conv2/conv2.0/Conv": {"prune": "halve"}}})
    with pytest.raises(RecipeError, match="cannot handle this layer: only Gemm") as ei:
        resolve_plan(analysis, explicit, registry)
    assert (ei.value.layer, ei.value.field) == ("/conv2/conv2.0/Conv", "prune")
    by_default = Recipe.from_dict({"defaults": {"prune": "halve"}})
    plan = resolve_plan(analysis, by_default, registry)
    assert set(plan.per_layer) == {"/fc1/Gemm", "/fc2/Gemm"}
    assert plan.skipped["/conv1/conv1.0/Conv"] == ["halve: only Gemm layers"]


def test_estimate_is_labelled_and_follows_the_plan(analysis, registry):
    r = Recipe.from_dict({"layers": {"/fc1/Gemm": {"prune": {"halve": {"ratio": 0.75}}, "quantize": "bits"}}})
    est = estimate_recipe(analysis, r, registry)
    fc1 = analysis.by_name()["/fc1/Gemm"]
    assert est.per_layer["/fc1/Gemm"].params == int(fc1.params * 0.25)
    assert est.per_layer["/fc1/Gemm"].weight_bytes == int(fc1.params * 0.25)  # 8 bits
    assert est.per_layer["/fc2/Gemm"].weight_bytes == analysis.by_name()["/fc2/Gemm"].weight_bytes
    assert all(m.kind == "estimated" for m in est.metrics())


def test_with_layer_and_summary():
    r = Recipe().with_layer("/fc1/Gemm", LayerPlan(quantize=Step(technique="bits")))
    assert r.summary() == "/fc1/Gemm: bits"
    assert r.with_layer("/fc1/Gemm", None).layers == {}
    assert Recipe().summary() == "(no compression)"


# ---------------------------------------------------------------------- property: round trips

_names = st.sampled_from(LAYERS + ["/conv*", "/fc?/Gemm", "*"])
_step = st.one_of(
    st.none(),
    st.builds(lambda r: {"halve": {"ratio": r}}, st.floats(0.05, 0.95).map(lambda x: round(x, 3))),
)
_qstep = st.one_of(st.none(), st.sampled_from([{"bits": {"bits": 4}}, {"bits": {"bits": 8}}, "bits"]))
_plan = st.fixed_dictionaries({}, optional={"prune": _step, "quantize": _qstep})


@settings(max_examples=40, deadline=None)
@given(layers=st.dictionaries(_names, _plan, max_size=4), defaults=_plan)
def test_round_trip_property(layers, defaults):
    r = Recipe.from_dict({"defaults": defaults, "layers": layers})
    for fmt in ("yaml", "toml"):
        again = Recipe.loads(r.dump(fmt), fmt=fmt)
        assert again.resolve(LAYERS) == r.resolve(LAYERS)


def test_inherited_step_on_a_named_layer_is_skipped_not_an_error(analysis, registry):
    # The layer is named for another stage; the default prune step it inherits does not fit it.
    r = Recipe.from_dict(
        {"defaults": {"prune": "halve"}, "layers": {"/conv2/conv2.0/Conv": {"quantize": "bits"}}}
    )
    plan = resolve_plan(analysis, r, registry)
    assert [s for s, _, _ in plan.per_layer["/conv2/conv2.0/Conv"]] == ["quantize"]
    assert plan.skipped["/conv2/conv2.0/Conv"] == ["halve: only Gemm layers"]


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.*ml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipes_load_and_resolve(path, analysis):
    r = Recipe.load(path)
    assert r.name and r.description
    if path.name.startswith("digits"):
        # Resolve against the model with the installed techniques: every step validates.
        plan = resolve_plan(analysis, r)
        assert plan.per_layer
        if r.calibration.data:
            assert (path.parent / r.calibration.data).exists()  # relative to the recipe file


@pytest.mark.parametrize("disabled", ["none", {"none": None}, {"none": {}}, {"technique": "none"}, None])
def test_every_spelling_of_none_disables_a_stage_and_round_trips(disabled):
    # Found by the Hypothesis pass: `{none: null}` used to parse as a technique called "none".
    r = Recipe.from_dict({"defaults": {"decompose": disabled}, "layers": {"/fc1/Gemm": {"prune": disabled}}})
    assert r.defaults.decompose is None and r.layers["/fc1/Gemm"].prune is None
    assert Recipe.loads(r.dump("yaml")) == r
    assert Recipe.loads(r.dump("toml"), fmt="toml") == r
