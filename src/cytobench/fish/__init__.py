"""Interphase-FISH analysis (FISH paper): nucleus segmentation, per-nucleus signal counts, mosaicism.

Modules: :mod:`~cytobench.fish.analyze` (the ``fish analyze`` pipeline), :mod:`~cytobench.fish.channels`
(readers and channel roles), :mod:`~cytobench.fish.segmenters` (YOLO adapter with tiling) and
:mod:`~cytobench.fish.otsu` (classical fallback), :mod:`~cytobench.fish.mosaicism` /
:mod:`~cytobench.fish.corrected` / :mod:`~cytobench.fish.intervals` (estimates and intervals),
:mod:`~cytobench.fish.calibrate` (confusion matrices from simulated truth), :mod:`~cytobench.fish.overlay`,
:mod:`~cytobench.fish.report`, :mod:`~cytobench.fish.command` (CLI options).
"""
