"""Public API for technique plugins."""

from studio.plugin_api.technique import (
    YES,
    ApplyContext,
    BaseTechnique,
    LayerEstimate,
    Params,
    Stage,
    Support,
    Technique,
    no,
)

__all__ = [
    "YES",
    "ApplyContext",
    "BaseTechnique",
    "LayerEstimate",
    "Params",
    "Stage",
    "Support",
    "Technique",
    "no",
]
