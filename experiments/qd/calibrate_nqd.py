"""Calibrate the simulator's photon budget N_qd (and starting-depth spread) against the paper's TrackPy row.

The paper tuned N_qd to its in-vivo brain images and reports TrackPy's AUC (Table 1); TrackPy is a
fixed reference, so we pick the N_qd whose TrackPy AUCs at D = 0.75 um^2/s best match the paper's
(0.06 / 0.42 / 0.73 at 70 / 140 / 210 nm), then keep it for every D.

    python experiments/qd/calibrate_nqd.py --n 1000 --n-qd 20 30 40 60 80 --z-sigma 0.5

For each setting TrackPy's diameter and minmass are fitted on a separate simulated training sample
(D ~ U(0.75, 1.75)), exactly as ``cytobench reproduce qd/table1`` does.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from cytobench.reproduce.qd_table1 import EPS_PX, batch_targets, fit_trackpy, load_paper_table, score_methods
from cytobench.simulate.qd import ScanParams, simulate_qd_batch


def trackpy_aucs(
    params: ScanParams, n: int, diffusions: tuple[float, ...], seed: int
) -> dict[float, list[float]]:
    locator = fit_trackpy(params, n, seed)
    out = {}
    for k, diffusion in enumerate(diffusions):
        batch = simulate_qd_batch(n, diffusion, params, np.random.default_rng([seed, 100 + k]))
        aucs, _ = score_methods({"TrackPy": locator(batch.counts)}, batch_targets(batch), EPS_PX)
        out[diffusion] = [aucs["TrackPy"][e] for e in EPS_PX]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=1000, help="test images per setting (and TrackPy fit images)"
    )
    parser.add_argument("--n-qd", type=float, nargs="+", default=[20, 30, 40, 60, 80])
    parser.add_argument("--z-sigma", type=float, nargs="+", default=[0.5])
    parser.add_argument("--diffusions", type=float, nargs="+", default=[0.75, 1.0, 1.75])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    paper = load_paper_table()["rows"]["TrackPy"]
    print("n_qd  z_sigma  D     AUC@70  AUC@140  AUC@210   paper            sq.err(D=0.75)")
    for z_sigma in args.z_sigma:
        for n_qd in args.n_qd:
            params = dataclasses.replace(ScanParams(), n_qd=n_qd, z_start_sigma_um=z_sigma)
            aucs = trackpy_aucs(params, args.n, tuple(args.diffusions), args.seed)
            for d, values in aucs.items():
                ref = paper.get(d)
                err = sum((a - b) ** 2 for a, b in zip(values, ref)) if ref and d == 0.75 else float("nan")
                ref_s = " ".join(f"{v:.2f}" for v in ref) if ref else "-"
                print(
                    f"{n_qd:5g} {z_sigma:7g} {d:5g}   {values[0]:.3f}   {values[1]:.3f}    {values[2]:.3f}    {ref_s:15s}  {err:.4f}"
                )


if __name__ == "__main__":
    main()
