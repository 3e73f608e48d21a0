"""Metric: every number the studio shows says what it is (measured / estimated / fidelity)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

MetricKind = Literal["measured", "estimated", "fidelity"]
KINDS: tuple[str, ...] = ("measured", "estimated", "fidelity")
GLYPH = {"measured": "●", "estimated": "○", "fidelity": "◐"}


@dataclass(frozen=True)
class Metric:
    """One number with its provenance. `kind` and `source` are mandatory; measured/fidelity
    metrics must say on how many samples they were taken."""

    name: str  # e.g. "top1", "cosine_mean", "latency_p50_ms", "size_bytes"
    value: float
    kind: MetricKind
    source: str  # data set path / "formula" / "file on disk" / "ORT CPUExecutionProvider"
    n_samples: int | None = None
    unit: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Metric.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.source:
            raise ValueError(f"Metric {self.name!r} has no source")
        if self.kind in ("measured", "fidelity") and self.name not in SAMPLE_FREE and self.n_samples is None:
            raise ValueError(f"{self.kind} metric {self.name!r} needs n_samples")

    def label(self) -> str:
        """Human label: value + unit + what it is."""
        v = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        what = self.kind if self.n_samples is None else f"{self.kind} on {self.n_samples} samples"
        return f"{v}{(' ' + self.unit) if self.unit else ''} ({what}, {self.source})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Metric:
        return cls(**d)


# Measurements that are not taken over data samples (a file size on disk).
SAMPLE_FREE = {"size_bytes", "zipped_bytes", "file_bytes"}
