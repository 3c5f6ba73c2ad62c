"""Public simulator API (re-export of :mod:`agents.sources.sim`); see that module's docstring."""

from agents.sources.sim import (
    DEMO_PROJECTS,
    KINDS,
    MODELS,
    WINDOW_S,
    Fleet,
    Job,
    NodeSpec,
    ProjectSpec,
    Silence,
    SimSource,
    demo_fleet,
    gpu_uuid,
)

__all__ = [
    "DEMO_PROJECTS",
    "KINDS",
    "MODELS",
    "WINDOW_S",
    "Fleet",
    "Job",
    "NodeSpec",
    "ProjectSpec",
    "Silence",
    "SimSource",
    "demo_fleet",
    "gpu_uuid",
]
