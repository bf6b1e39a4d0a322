"""Sweeps under latency SLOs (Optuna) and export of the winner for production."""

from .result import SweepResult
from .space import Space
from .sweep import sweep

__all__ = ["Space", "SweepResult", "sweep"]
