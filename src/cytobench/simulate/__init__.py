"""Simulators producing labelled images with known truth, in COCO format (one module per task)."""

from __future__ import annotations

from cytobench.simulate.toy import simulate_toy

__all__ = ["simulate_toy"]
