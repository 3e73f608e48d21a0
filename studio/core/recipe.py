"""Recipe: the one description of a compression. Per-layer plan: decompose -> prune -> quantize
-> encode (-> finetune). Defaults, then globs in file order, then exact names; `null` disables."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from studio.core.errors import RecipeError

RECIPE_VERSION = 1
STAGES = ("decompose", "prune", "quantize", "encode", "finetune")
GLOB_CHARS = set("*?[")


class Step(BaseModel):
    """One technique applied at one stage: `{technique: svd, params: {rank_ratio: 0.25}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    technique: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        # `quantize: int8_dynamic` and `prune: {channels: {ratio: 0.5}}` are accepted too.
        if isinstance(v, str):
            return {"technique": v}
        if isinstance(v, dict) and "technique" not in v and len(v) == 1:
            ((k, p),) = v.items()
            return {"technique": k, "params": p or {}}
        return v

    def summary(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.technique}({ps})" if ps else self.technique


def _is_none_step(x) -> bool:
    if x == "none":
        return True
    if isinstance(x, dict):
        return x.get("technique") == "none" or (len(x) == 1 and "none" in x)
    return False


class LayerPlan(BaseModel):
    """What happens to one layer (or the layers a pattern matches). Unset = inherit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    decompose: Step | None = None
    prune: Step | None = None
    quantize: Step | None = None
    encode: Step | None = None
    finetune: Step | None = None

    @model_validator(mode="before")
    @classmethod
    def _none_steps(cls, v):
        # TOML cannot say null: `{technique = "none"}` (or "none", or the shorthand `{none: ...}`)
        # disables a stage; "none" is reserved, never a technique name.
        if isinstance(v, dict):
            v = {k: (None if _is_none_step(x) else x) for k, x in v.items()}
        return v

    def steps(self) -> list[tuple[str, Step]]:
        return [(s, getattr(self, s)) for s in STAGES if getattr(self, s) is not None]

    def is_empty(self) -> bool:
        return not self.steps()

    def summary(self) -> str:
        return " → ".join(st.summary() for _, st in self.steps()) or "—"

    def merged_over(self, base: LayerPlan) -> LayerPlan:
        """This plan's explicitly set stages override `base` (an explicit null disables)."""
        d = {s: getattr(base, s) for s in STAGES}
        for s in self.model_fields_set:
            d[s] = getattr(self, s)
        return LayerPlan(**d)

    def with_step(self, stage: str, step: Step | None) -> LayerPlan:
        d = {s: getattr(self, s) for s in STAGES if s in self.model_fields_set}
        d[stage] = step
        return LayerPlan(**d)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str | None = None
    n_samples: int = Field(128, gt=0)
    seed: int = 0


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = RECIPE_VERSION
    name: str = ""
    description: str = ""
    calibration: Calibration = Calibration()
    defaults: LayerPlan = LayerPlan()
    layers: dict[str, LayerPlan] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, v):
        if v > RECIPE_VERSION:
            raise ValueError(
                f"recipe version {v} is newer than this studio understands ({RECIPE_VERSION}); upgrade Pareto Studio"
            )
        if v < 1:
            raise ValueError("version must be >= 1")
        return v

    # ------------------------------------------------------------------ resolution

    def resolve(self, layer_names: list[str], *, strict: bool = True) -> dict[str, LayerPlan]:
        """Effective plan per layer. Exact names that match no layer are errors (strict)."""
        known = set(layer_names)
        out: dict[str, LayerPlan] = {}
        for key in self.layers:
            if not (GLOB_CHARS & set(key)) and key not in known and strict:
                close = [n for n in layer_names if key.split("/")[-2:-1] and key.split("/")[-2] in n][:3]
                raise RecipeError(
                    "no such layer in the model", layer=key, hint=f"did you mean {close}?" if close else None
                )
        for name in layer_names:
            plan = self.defaults
            for key, lp in self.layers.items():
                if GLOB_CHARS & set(key) and fnmatch.fnmatchcase(name, key):
                    plan = lp.merged_over(plan)
            if name in self.layers:
                plan = self.layers[name].merged_over(plan)
            if not plan.is_empty():
                out[name] = plan
        return out

    def explicit_layers(self, layer_names: list[str]) -> set[str]:
        """Layers named exactly (not via defaults or globs): errors there are hard errors."""
        return {n for n in layer_names if n in self.layers}

    def with_layer(self, name: str, plan: LayerPlan | None) -> Recipe:
        layers = dict(self.layers)
        if plan is None or (not plan.model_fields_set):
            layers.pop(name, None)
        else:
            layers[name] = plan
        return self.model_copy(update={"layers": layers})

    def summary(self) -> str:
        parts = []
        if not self.defaults.is_empty():
            parts.append(f"* {self.defaults.summary()}")
        parts += [f"{k}: {v.summary()}" for k, v in self.layers.items()]
        return "; ".join(parts) or "(no compression)"

    # ------------------------------------------------------------------ io

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json(exclude_defaults=False))

    def dump(self, fmt: str = "yaml") -> str:
        d = self.model_dump(mode="json", exclude_unset=True)
        d["version"] = self.version
        if fmt == "yaml":
            return yaml.safe_dump(d, sort_keys=False)
        if fmt == "toml":
            import tomli_w

            return tomli_w.dumps(_strip_none(d))
        if fmt == "json":
            return json.dumps(d, indent=2)
        raise ValueError(fmt)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        fmt = {".toml": "toml", ".json": "json"}.get(path.suffix, "yaml")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.dump(fmt))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "recipe") -> Recipe:
        if not isinstance(d, dict):
            raise RecipeError(f"{source}: a recipe must be a mapping, got {type(d).__name__}")
        _check_size(d, source)
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise _recipe_error(e, source) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        text = path.read_text(errors="replace")
        return cls.loads(text, fmt="toml" if path.suffix == ".toml" else "yaml", source=str(path))

    @classmethod
    def loads(cls, text: str, fmt: str = "yaml", source: str = "recipe") -> Recipe:
        try:
            if fmt == "toml":
                import tomllib

                d = tomllib.loads(text)
            else:
                d = yaml.safe_load(text)  # JSON is YAML too
        except Exception as e:
            raise RecipeError(
                f"{source}: cannot parse ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            ) from e
        return cls.from_dict(d, source=source)


MAX_RECIPE_NODES = 200_000


def _check_size(d: Any, source: str) -> None:
    """RecipeError when the recipe expands to more than MAX_RECIPE_NODES values: YAML aliases
    can nest shared lists into billions of elements that would hang printing or saving it."""
    stack, seen = [d], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > MAX_RECIPE_NODES:
            raise RecipeError(
                f"{source}: the recipe expands to more than {MAX_RECIPE_NODES} values",
                hint="YAML aliases nested too deeply?",
            )
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def _strip_none(d):
    # TOML has no null: a disabled stage is written as {technique = "none"}.
    if isinstance(d, dict):
        return {k: ({"technique": "none"} if v is None else _strip_none(v)) for k, v in d.items()}
    return d


def _recipe_error(e: ValidationError, source: str) -> RecipeError:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    layer = None
    if len(loc) >= 2 and loc[0] == "layers":
        layer = loc[1]
        loc = loc[2:]
    elif loc and loc[0] == "defaults":
        layer = "defaults"
        loc = loc[1:]
    field = ".".join(x for x in loc if not x.startswith(("function-", "model-"))) or None
    return RecipeError(f"{err['msg']} ({source})", layer=layer, field=field)
