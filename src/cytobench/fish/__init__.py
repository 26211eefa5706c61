"""Interphase-FISH analysis (FISH paper): nucleus segmentation, per-nucleus signal counts, mosaicism.

Modules: :mod:`~cytobench.fish.analyze` (the ``fish analyze`` pipeline), :mod:`~cytobench.fish.channels`
(readers and channel roles), :mod:`~cytobench.fish.segmenters` (YOLO adapter with tiling) and
:mod:`~cytobench.fish.otsu` (classical fallback), :mod:`~cytobench.fish.mosaicism` /
:mod:`~cytobench.fish.corrected` / :mod:`~cytobench.fish.intervals` (estimates and intervals),
:mod:`~cytobench.fish.calibrate` (confusion matrices from simulated truth), :mod:`~cytobench.fish.overlay`,
:mod:`~cytobench.fish.report`, :mod:`~cytobench.fish.checks` (warnings: clipped hot pixels, images without
probes, nuclei rejected for their size), :mod:`~cytobench.fish.command` (CLI options).
"""

#: Typical whole-nucleus diameter (um) of interphase blood-cell nuclei on FISH slides (the simulator's); the
#: Otsu segmenter's sizes follow it when the pixel size is known (:mod:`cytobench.fish.otsu`).
DEFAULT_NUCLEUS_DIAMETER_UM = 10.0
#: Percentile that sets the intensity range of data wider than 8 bits in ``fish analyze``
#: (:func:`cytobench.io.intensity.scale_to_unit_robust`; the same value as its default).
RANGE_PERCENTILE = 99.99
