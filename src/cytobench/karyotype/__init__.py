"""``cytobench karyotype``: a 24-class chromosome detector's output as karyograms, ISCN strings and a summary.

* :mod:`cytobench.karyotype.render`: each detected chromosome cut out and stood upright, arranged with
  :func:`cytobench.simulate.karyogram.karyogram_layout` and drawn as a labelled karyogram image.
* :mod:`cytobench.karyotype.report`: per-image class counts, ISCN karyotype and normal / abnormal call, the
  summary over a folder of cells (karyotype tally, abnormal fraction with a Wilson interval), json and markdown.
* :mod:`cytobench.karyotype.command`: the command line (options, checkpoint check, the per-image loop).
"""
