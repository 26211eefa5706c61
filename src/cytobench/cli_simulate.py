"""``cytobench simulate KIND``: every simulator's parser and one way to run them.

Each simulator is called with the flags every one shares (``--n``, ``--seed``, ``--out``, ``--overwrite``,
``--size`` and ``--val-fraction`` where it has them) checked first (:func:`check_simulate_args`), and its bad
arguments or an unwritable ``--out`` end as one line (``simulate KIND: ...``), no traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from cytobench.cli_checks import check_simulate_args
from cytobench.errors import CytobenchError

__all__ = ["add_simulate_parser"]


def _parse_counts(text: str) -> int | dict[int, float]:
    """``"46"`` or ``"45=0.25,46=0.5,47=0.25"`` (chromosomes per cell: probability)."""
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=") for item in text.split(","))
        return {int(k): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(
            f"--n-chromosomes: expected N or N=P,N=P,... (e.g. 45=0.25,46=0.5,47=0.25), got {text!r}"
        ) from None


def _size_arg(values: Sequence[int]) -> int | tuple[int, ...]:
    """``--size S`` (square) or ``--size W H``."""
    if len(values) > 2:
        raise ValueError(f"--size takes one value (square) or two (W H), got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)


def _size_wh(values: Sequence[int]) -> tuple[int, int]:
    """``--size S`` or ``--size W H`` as (W, H), for the simulators that take no square shorthand."""
    size = _size_arg(values)
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def _runner(what: str, simulate: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], None]:
    """The command of one simulator: checks, ``simulate(args)``, one line on bad input, what it wrote."""

    def command(args: argparse.Namespace) -> None:
        check_simulate_args(args)
        try:
            out = simulate(args)
        except (ValueError, OSError) as err:  # bad argument or unwritable --out: one line, no traceback
            raise CytobenchError(f"simulate {args.simulator}: {err}") from None
        print(f"simulated {args.n} {what} into {args.out} ({out})")

    return command


def _simulator(
    simulators: Any,
    name: str,
    summary: str,
    what: str,
    simulate: Callable[[argparse.Namespace], Any],
    *,
    size: Sequence[int] | None = None,
    n_help: str = "number of images",
    val_split: bool = True,
) -> argparse.ArgumentParser:
    """``cytobench simulate NAME`` with the arguments every simulator shares: --n, --seed, --out, --overwrite,
    and --size S | W H (default ``size``) and --val-fraction where the simulator has them; it runs
    ``simulate(args)`` and reports ``simulated N <what> into OUT``."""
    parser = simulators.add_parser(name, help=summary)
    parser.add_argument("--n", type=int, required=True, help=n_help)
    if size is not None:
        parser.add_argument(
            "--size", type=int, nargs="+", default=list(size), metavar="PX", help="S (square) or W H"
        )
    parser.add_argument("--seed", type=int, default=0)
    if val_split:
        parser.add_argument(
            "--val-fraction", type=float, help="write train.json + val.json (last images = val)"
        )
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset already in --out (its json and the images it writes)",
    )
    parser.set_defaults(func=_runner(what, simulate))
    return parser


# ------------------------------------------------------------------------------- one call per simulator
def _toy(args: argparse.Namespace) -> Any:
    from cytobench.simulate.toy import simulate_toy

    return simulate_toy(
        n_images=args.n,
        out_dir=args.out,
        size=_size_wh(args.size),
        seed=args.seed,
        val_fraction=args.val_fraction,
    )


def _qd(args: argparse.Namespace) -> Any:
    from cytobench.simulate.qd import ScanParams
    from cytobench.simulate.qd_dataset import simulate_qd_dataset

    if (args.diffusion is None) == (args.diffusion_range is None):
        raise ValueError("give exactly one of --diffusion D or --diffusion-range LO HI")
    params = ScanParams(**({"n_qd": args.n_qd} if args.n_qd is not None else {}))
    return simulate_qd_dataset(
        args.out,
        args.n,
        diffusion=args.diffusion,
        diffusion_range=tuple(args.diffusion_range) if args.diffusion_range else None,
        params=params,
        seed=args.seed,
    )


def _metaphase(args: argparse.Namespace) -> Any:
    from cytobench.simulate.metaphase import simulate_metaphase

    return simulate_metaphase(
        args.n,
        args.out,
        size=_size_wh(args.size),
        seed=args.seed,
        n_chromosomes=_parse_counts(args.n_chromosomes),
        overlap_target=args.overlap_target,
        scale=args.scale,
        val_fraction=args.val_fraction,
        label_mode=args.labels,
    )


def _fish(args: argparse.Namespace) -> Any:
    from cytobench.simulate.fish import parse_mix, simulate_fish

    parsed = [parse_mix(text) for text in args.mix or []]
    samples = {name or f"S{k + 1}": mix for k, (name, mix) in enumerate(parsed)} or None
    if samples is not None and len(samples) != len(parsed):
        raise ValueError("--mix: two samples have the same name")
    return simulate_fish(
        args.n,
        args.out,
        size=_size_arg(args.size),
        seed=args.seed,
        val_fraction=args.val_fraction,
        samples=samples,
        pixel_size_um=args.pixel_size,
    )


def _brightfield(args: argparse.Namespace) -> Any:
    from cytobench.simulate.brightfield import simulate_brightfield

    return simulate_brightfield(
        args.n,
        args.out,
        size=_size_arg(args.size),
        seed=args.seed,
        overlap_fraction=args.overlap_fraction,
        val_fraction=args.val_fraction,
        pixel_scale=args.pixel_scale,
    )


def _karyogram(args: argparse.Namespace) -> Any:
    from cytobench.simulate.karyogram import simulate_karyogram

    return simulate_karyogram(
        args.n,
        args.out,
        size=_size_arg(args.size),
        seed=args.seed,
        n_chromosomes=_parse_counts(args.n_chromosomes),
        scale=args.scale,
        val_fraction=args.val_fraction,
    )


def _add_n_chromosomes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-chromosomes",
        default="46",
        metavar="N|N=P,...",
        help="per cell, e.g. 46 or 45=0.25,46=0.5,47=0.25",
    )


# ---------------------------------------------------------------------------------------------- parser
def add_simulate_parser(sub: Any) -> None:
    """``cytobench simulate {toy,qd,metaphase,fish,brightfield,karyogram}`` on the main parser's subparsers."""
    sim = sub.add_parser("simulate", help="generate a labelled dataset with known truth (COCO)")
    sim_sub = sim.add_subparsers(dest="simulator", required=True)
    _simulator(
        sim_sub,
        "toy",
        "ellipse 'cells' and debris, for smoke tests and demos",
        "toy images",
        _toy,
        size=[128, 128],
    )

    qd = _simulator(
        sim_sub,
        "qd",
        "two-photon laser-scan images of a diffusing quantum dot (QD paper)",
        "two-photon QD images",
        _qd,
        val_split=False,
    )
    qd.add_argument("--diffusion", type=float, help="D in um^2/s for every image")
    qd.add_argument("--diffusion-range", type=float, nargs=2, metavar=("LO", "HI"), help="D ~ U(LO, HI)")
    qd.add_argument("--n-qd", type=float, help="photons per dwell at focus (default: the calibrated value)")

    meta = _simulator(
        sim_sub,
        "metaphase",
        "G-banded metaphase spreads with per-chromosome truth (DeepACEv2)",
        "metaphase spreads",
        _metaphase,
        size=[1600, 1200],
    )
    _add_n_chromosomes(meta)
    meta.add_argument("--overlap-target", type=float, default=0.10, help="mean fraction in S_o (Eq. 14)")
    meta.add_argument("--scale", type=float, help="length of chromosome 1 in px (default 0.13 * min(W, H))")
    meta.add_argument(
        "--labels",
        choices=["chromosome", "karyotype"],
        default="chromosome",
        help="1 class or the 24 classes",
    )

    fsim = _simulator(
        sim_sub,
        "fish",
        "interphase-FISH images (DAPI nuclei, chr21 / X probe signals) with per-nucleus truth",
        "interphase-FISH images",
        _fish,
        size=[512],
    )
    fsim.add_argument(
        "--mix",
        action="append",
        metavar="[NAME:]K=P,...",
        help="karyotype mix of one sample, e.g. normal=0.87,trisomy21=0.08,monosomyX=0.05; repeat for "
        "several samples (images alternate between them)",
    )
    fsim.add_argument("--pixel-size", type=float, help="pixel size in um (default 0.15; nuclei are 10 um)")

    bsim = _simulator(
        sim_sub,
        "brightfield",
        "adherent cells in two brightfield focal planes + phase contrast, with amodal masks, nuclei, "
        "semantic and overlap maps (SEU-Net thesis)",
        "brightfield samples",
        _brightfield,
        size=[1080],
        n_help="number of samples",
    )
    bsim.add_argument(
        "--overlap-fraction",
        type=float,
        default=0.3,
        help="fraction of cells overlapping another cell, in [0, 1] (mean over images)",
    )
    bsim.add_argument(
        "--pixel-scale",
        type=float,
        default=1.0,
        help="magnification relative to the thesis' x63 images: 0.5 halves cells, halos and blur in px "
        "(cell radius 40-60 px at 1)",
    )

    ksim = _simulator(
        sim_sub,
        "karyogram",
        "G-banded karyograms: upright chromosomes in numbered homologous pairs, 24-class truth (KTH thesis)",
        "karyograms",
        _karyogram,
        size=[1024, 768],
    )
    _add_n_chromosomes(ksim)
    ksim.add_argument(
        "--scale", type=float, help="largest length of chromosome 1 in px (default: as the image allows)"
    )
