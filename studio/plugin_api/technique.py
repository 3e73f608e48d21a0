"""The contract every compression technique implements (built-in or third-party).

A technique is found through the `studio.techniques` entry-point group and imported only when
first used. It never edits the user's file: `apply` receives a ModelProto copy and returns the
rewritten one. Nodes a technique creates from layer `X` are named `X/<suffix>` so that later
stages of the recipe that target `X` still find them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from studio.core.graph import LayerInfo, ModelAnalysis
    from studio.core.jobs import JobContext


class Stage(IntEnum):
    """Fixed application order of a recipe."""

    DECOMPOSE = 0
    PRUNE = 1
    QUANTIZE = 2
    ENCODE = 3
    FINETUNE = 4

    @property
    def key(self) -> str:
        return self.name.lower()


STAGE_KEYS = [s.key for s in Stage]


class Params(BaseModel):
    """Base for technique parameters: strict (unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Support:
    """Whether a technique can handle a layer, and if not, why (shown in the GUI)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


def no(reason: str) -> Support:
    return Support(False, reason)


@dataclass
class LayerEstimate:
    """Instant, formula-based cost of one layer after a plan. Always *estimated*."""

    params: int
    macs: int
    weight_bytes: int
    kind: str = "estimated"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, layer: LayerInfo) -> LayerEstimate:
        return cls(layer.params, layer.macs, layer.weight_bytes)


@dataclass
class ApplyContext:
    """What a technique gets besides the model: progress/cancel, calibration data, warnings."""

    job: JobContext
    calibration: dict[str, np.ndarray] | None = None  # model inputs, N samples on axis 0
    original: onnx.ModelProto | None = None
    analysis: ModelAnalysis | None = None  # of the model as it is when this stage starts
    seed: int = 0
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. torch source for fine-tuning

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def progress(self, fraction: float, message: str = "") -> None:
        self.job.report(fraction, message)


@runtime_checkable
class Technique(Protocol):
    name: ClassVar[str]
    label: ClassVar[str]
    stage: ClassVar[Stage]
    Params: ClassVar[type[Params]]

    def applies_to(self, layer: LayerInfo) -> Support: ...

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate: ...

    def apply(
        self, model: onnx.ModelProto, plan: dict[str, Params], ctx: ApplyContext
    ) -> onnx.ModelProto: ...


class BaseTechnique:
    """Convenience base: subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    stage: ClassVar[Stage] = Stage.QUANTIZE
    Params: ClassVar[type[Params]] = Params
    # Key parameter the GUI table edits for this technique (e.g. "ratio", "rank_ratio", "bits").
    primary_param: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    def applies_to(self, layer: LayerInfo) -> Support:  # pragma: no cover - overridden
        return no("not implemented")

    def estimate(self, layer: LayerInfo, params: Params, before: LayerEstimate) -> LayerEstimate:
        return LayerEstimate(before.params, before.macs, before.weight_bytes, notes=["no estimate"])

    def apply(self, model, plan, ctx):  # pragma: no cover - overridden
        raise NotImplementedError

    def parse_params(self, raw: dict | None) -> Params:
        return self.Params(**(raw or {}))

    def __repr__(self) -> str:
        return f"<technique {self.name} ({self.stage.key})>"
