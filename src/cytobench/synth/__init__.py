"""Synthetic brightfield training data (SparseSEU-Net thesis, Sec. 4.4 and 5.5-5.6).

Two stages, as in the thesis:

1. :mod:`~cytobench.synth.copy_paste` builds new phase-contrast images by pasting whole cells, cut from
   annotated phase images (:mod:`~cytobench.synth.cells`), additively onto a blank canvas, with exact
   amodal / visible / nucleus masks and a bounded overlap between cells (Sec. 4.4.1).
2. :mod:`~cytobench.synth.pix2pix` translates each new phase image into the two brightfield focal planes
   with a conditional GAN trained on (phase, brightfield) pairs (Sec. 4.4.2;
   :mod:`~cytobench.synth.pix2pix_train` trains it).

:mod:`~cytobench.synth.dataset` writes the result as a COCO set in the brightfield data contract, and
:mod:`~cytobench.synth.fid` scores generated planes against real ones (Frechet distance of image
features). ``cytobench synth ...`` (:mod:`~cytobench.synth.command`) runs all of it.
"""
