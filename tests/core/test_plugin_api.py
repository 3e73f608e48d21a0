"""Plugin API: a third-party technique is discovered through its entry point alone, runs in the
pipeline and the CLI; a broken plugin is reported in Registry.errors and skipped, never fatal;
every installed technique honours the contract."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from studio.core.errors import PluginError, RecipeError
from studio.core.evaluate import evaluate, load_npz
from studio.core.graph import analyze
from studio.core.jobs import drive
from studio.core.model import file_sha256, load_model
from studio.core.onnx_utils import GraphIndex, tensor_array
from studio.core.pipeline import compress
from studio.core.recipe import Recipe
from studio.plugin_api import registry as registry_mod
from studio.plugin_api.registry import Registry
from studio.plugin_api.technique import LayerEstimate, Params, Stage, Support, Technique

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "thirdparty_plugin"


@pytest.fixture
def thirdparty(tmp_path, monkeypatch):
    """'Install' the fixture distribution the way pip lays it out: package + *.dist-info with the
    entry points declared in its pyproject.toml, on a fresh sys.path entry."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(FIXTURE / "studio_roundw", site / "studio_roundw")
    meta = tomllib.loads((FIXTURE / "pyproject.toml").read_text())["project"]
    dist = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    lines = []
    for group, eps in meta["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in [m for m in sys.modules if m == "studio_roundw" or m.startswith("studio_roundw.")]:
        del sys.modules[mod]


def test_thirdparty_found_by_entry_point_and_loaded_lazily(thirdparty):
    reg = Registry()
    assert "round_weights" in reg.names()
    assert "roundw_broken" in reg.names()
    # Listing does not import the plugin: only first use does.
    assert "studio_roundw" not in sys.modules
    tech = reg.get("round_weights")
    assert "studio_roundw" in sys.modules
    assert isinstance(tech, Technique)
    assert tech.stage is Stage.ENCODE
    assert reg.get("round_weights") is tech  # loaded once


def test_without_the_distribution_it_is_unknown():
    reg = Registry()
    assert "round_weights" not in reg.names()
    with pytest.raises(PluginError, match="unknown technique 'round_weights'"):
        reg.get("round_weights")


def test_broken_plugin_is_reported_and_skipped(thirdparty):
    reg = Registry()
    available = reg.available()  # must not raise
    assert "round_weights" in available
    assert "roundw_broken" not in available
    err = reg.errors["roundw_broken"]
    assert "ImportError" in err and "libdoesnotexist" in err and "studio_roundw.broken:Broken" in err
    with pytest.raises(PluginError, match="roundw_broken"):
        reg.get("roundw_broken")
    assert "roundw_broken" not in reg.by_stage(Stage.ENCODE)
    assert "round_weights" in reg.by_stage(Stage.ENCODE)


def test_recipe_naming_broken_plugin_is_a_recipe_error(thirdparty, digits_onnx):
    handle = load_model(digits_onnx)
    recipe = Recipe.from_dict({"layers": {"/fc2/Gemm": {"encode": "roundw_broken"}}})
    with pytest.raises(RecipeError) as ei:
        drive(compress(handle, recipe, registry=Registry()))
    assert ei.value.layer == "/fc2/Gemm"
    assert ei.value.field == "encode.technique"
    assert "failed to load" in str(ei.value)


def test_thirdparty_params_are_validated(thirdparty, digits_onnx):
    handle = load_model(digits_onnx)
    recipe = Recipe.from_dict({"layers": {"/fc1/Gemm": {"encode": {"round_weights": {"step": 0}}}}})
    with pytest.raises(RecipeError) as ei:
        drive(compress(handle, recipe, registry=Registry()))
    assert ei.value.layer == "/fc1/Gemm" and ei.value.field == "encode.params.step"
    recipe = Recipe.from_dict({"layers": {"/fc1/Gemm": {"encode": {"round_weights": {"stepp": 0.1}}}}})
    with pytest.raises(RecipeError, match="stepp"):
        drive(compress(handle, recipe, registry=Registry()))


def test_thirdparty_runs_in_the_pipeline(thirdparty, digits_onnx, digits_eval):
    before = file_sha256(digits_onnx)
    handle = load_model(digits_onnx)
    step = 0.002
    recipe = Recipe.from_dict({"layers": {"/fc1/Gemm": {"encode": {"round_weights": {"step": step}}}}})
    variant = drive(compress(handle, recipe, registry=Registry()))
    assert variant.provenance["steps"] == [
        {"stage": "encode", "technique": "round_weights", "layers": ["/fc1/Gemm"]}
    ]
    idx, orig = GraphIndex(variant.proto), GraphIndex(handle.proto)
    fc1 = analyze(handle.proto, with_stats=False).by_name()["/fc1/Gemm"].weight_name
    w = tensor_array(idx.inits[fc1]).astype(np.float64)
    np.testing.assert_allclose(w / step, np.round(w / step), atol=1e-3)
    assert not np.array_equal(w, tensor_array(orig.inits[fc1]))
    for name in orig.inits:  # every other weight untouched
        if name != fc1:
            np.testing.assert_array_equal(tensor_array(idx.inits[name]), tensor_array(orig.inits[name]))
    ds = load_npz(digits_eval).subset(range(120))
    ms = {m.name: m for m in evaluate(variant.proto, ds, reference=handle.proto)}
    assert ms["cosine_mean"].kind == "fidelity" and ms["cosine_mean"].n_samples == 120
    assert ms["cosine_mean"].value > 0.99
    assert file_sha256(digits_onnx) == before


def test_thirdparty_plugin_through_the_cli(thirdparty, digits_onnx, tmp_path, monkeypatch, capsys):
    from studio.cli.main import main

    monkeypatch.setattr(registry_mod, "_default", None)  # the CLI's registry sees the new dist
    recipe = tmp_path / "r.yaml"
    recipe.write_text("layers:\n  /fc2/Gemm:\n    encode: {round_weights: {step: 0.01}}\n")
    out = tmp_path / "out.onnx"
    assert main(["compress", str(digits_onnx), "--recipe", str(recipe), "-o", str(out), "--json"]) == 0
    assert out.exists()
    assert "round_weights" in capsys.readouterr().out
    monkeypatch.setattr(registry_mod, "_default", None)


def _digits_layers(digits_onnx):
    return analyze(load_model(digits_onnx).proto, with_stats=False).layers


def test_every_installed_technique_honours_the_contract(digits_onnx):
    """Whatever techniques are installed: strict Params, a Stage, Support answers with reasons,
    estimates that stay estimates. Broken ones are listed in errors, not raised."""
    reg = Registry()
    available = reg.available()
    assert set(available) | set(reg.errors) == set(reg.names())
    layers = _digits_layers(digits_onnx)
    for name, tech in available.items():
        assert tech.name == name, f"{name}: class attribute name is {tech.name!r}"
        assert isinstance(tech.stage, Stage)
        assert issubclass(tech.Params, Params)
        assert tech.Params.model_config.get("extra") == "forbid", f"{name}: Params must forbid extras"
        try:
            params = tech.parse_params({}) if hasattr(tech, "parse_params") else tech.Params()
        except Exception:  # a technique may require a parameter; then no default estimate
            params = None
        for la in layers:
            sup = tech.applies_to(la)
            assert isinstance(sup, Support)
            if not sup:
                assert sup.reason, f"{name} refuses {la.name} without a reason"
            elif params is not None:
                est = tech.estimate(la, params, LayerEstimate.of(la))
                assert isinstance(est, LayerEstimate) and est.kind == "estimated"
                assert 0 <= est.weight_bytes and 0 <= est.params
