"""pix2pix (Isola et al. 2017) from the phase-contrast plane to the two brightfield focal planes
(thesis Sec. 4.4.2, Figs. 4.9-4.10, Eq. 5.1).

* **Generator** (:class:`UNetGenerator`): a U-Net of ``depth`` 4x4 stride-2 convolutions (LeakyReLU 0.2,
  BatchNorm except on the first and the innermost) and as many 4x4 stride-2 transposed convolutions (ReLU,
  BatchNorm) with skip connections, ending in Tanh: 1 phase channel in, 2 brightfield channels out, both in
  [-1, 1]. Channels ``width * min(2**i, 8)`` at level ``i``, as pix2pix's ``unet_256`` (``depth = 8``
  for 256 px crops; the thesis's nine levels are ``depth = 9`` at 512 px). Dropout 0.5 in the (up to)
  three decoder blocks after the innermost one.
* **Discriminator** (:class:`PatchDiscriminator`): the 70 x 70 PatchGAN on the concatenated (phase,
  brightfield) pair: 4x4 convolutions C64-C128-C256 (stride 2), C512 (stride 1), then a 1-channel 4x4
  convolution; each output logit sees a 70 x 70 input patch.
* **Losses** (:func:`discriminator_loss`, :func:`generator_loss`): BCE-with-logits GAN loss on every patch
  plus ``lambda_l1 * L1(G(x), y)`` for the generator (``lambda_l1 = 100``); the discriminator's loss is
  halved, as in pix2pix.
* **Optimisers**: Adam, lr 2e-4, betas (0.5, 0.999), as pix2pix (the thesis mentions AdamW with the same
  values in Sec. 5.6; Adam is pix2pix's and what we use).
* **Inference noise**: pix2pix and the thesis keep dropout **on** at inference, the generator's only source
  of variety (the thesis uses it to fill the blank background of copy-paste images). :func:`translate`
  therefore runs the generator with BatchNorm in eval mode (running statistics) and the dropout layers in
  training mode, seeded per call so the output is reproducible; ``dropout=False`` gives the deterministic
  mean-field output.

Images: phase and brightfield in [0, 1] on disk are mapped to [-1, 1] for the networks
(:func:`to_model_range`). Checkpoints (:func:`save_pix2pix`, :func:`load_pix2pix`) hold the config, both
state dicts and both optimiser states as plain data, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cytobench.errors import BadInputError, TrainingDiverged
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import save_atomic

__all__ = [
    "CHECKPOINT_FORMAT",
    "Pix2Pix",
    "Pix2PixConfig",
    "PatchDiscriminator",
    "UNetGenerator",
    "discriminator_loss",
    "from_model_range",
    "generator_loss",
    "load_pix2pix",
    "save_pix2pix",
    "to_model_range",
    "train_step",
    "translate",
]

CHECKPOINT_FORMAT = "cytobench-pix2pix"


@dataclass(frozen=True)
class Pix2PixConfig:
    """Architecture and loss settings (stored in every checkpoint).

    Attributes:
        size: training crop side in px (a power of two >= 32); the generator's ``depth`` defaults to ``log2(size)``.
        depth: U-Net levels; inputs must have sides divisible by ``2**depth`` (:func:`translate` pads).
        width: generator channels at the first level (pix2pix: 64).
        disc_width: discriminator channels at the first layer (pix2pix: 64).
        in_channels / out_channels: phase planes in, brightfield planes out.
        dropout: generator dropout rate (0.5).
        lambda_l1: weight of the L1 term (100).
        lr / beta1 / beta2: Adam settings.
    """

    size: int = 256
    depth: int = 8
    width: int = 64
    disc_width: int = 64
    in_channels: int = 1
    out_channels: int = 2
    dropout: float = 0.5
    lambda_l1: float = 100.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    @classmethod
    def for_size(cls, size: int, **overrides: Any) -> Pix2PixConfig:
        """A config for ``size`` px crops (a power of two >= 32): ``depth = log2(size)``.

        Raises:
            ValueError: ``size`` is not such a power of two.
        """
        if not isinstance(size, int) or size < 32 or size & (size - 1):
            raise ValueError(
                f"size must be a power of two >= 32 (the U-Net halves it to 1 px; the PatchGAN needs 32), got {size!r}"
            )
        return cls(size=size, depth=int(math.log2(size)), **overrides)


def _init_weights(module: nn.Module) -> None:
    """pix2pix's initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class UNetGenerator(nn.Module):
    """U-Net generator (module docstring). ``forward``: ``(B, in, H, W) -> (B, out, H, W)`` in [-1, 1]."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        width: int = 64,
        depth: int = 8,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"depth must be >= 2 and width >= 1, got depth {depth}, width {width}")
        self.depth = depth
        channels = [width * min(2**i, 8) for i in range(depth)]
        downs = []
        for i in range(depth):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            inner = i == depth - 1
            layers.append(
                nn.Conv2d(
                    in_channels if i == 0 else channels[i - 1], channels[i], 4, 2, 1, bias=i == 0 or inner
                )
            )
            if 0 < i < depth - 1:  # the 1 px bottleneck has no norm (batch statistics of one value)
                layers.append(nn.BatchNorm2d(channels[i]))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)
        ups = []
        n_dropout = min(3, depth - 2)
        for k, i in enumerate(range(depth - 1, -1, -1)):  # innermost first
            outermost = i == 0
            in_ch = channels[i] if k == 0 else 2 * channels[i]
            out_ch = out_channels if outermost else channels[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=outermost)]
            if outermost:
                layers.append(nn.Tanh())
            else:
                layers.append(nn.BatchNorm2d(out_ch))
                if 1 <= k <= n_dropout and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**self.depth
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"input sides must be multiples of {side} (2**depth), got {tuple(x.shape[-2:])}")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[0](skips[-1])
        for up, skip in zip(self.ups[1:], reversed(skips[:-1])):
            x = up(torch.cat([x, skip], dim=1))
        return x


class PatchDiscriminator(nn.Module):
    """70 x 70 PatchGAN. ``forward``: ``(B, in, H, W)`` -> ``(B, 1, H/8 - 2, W/8 - 2)`` real/fake logits."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 8 * w, 4, 1, 1, bias=False),
            nn.BatchNorm2d(8 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8 * w, 1, 4, 1, 1),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``0.5 * (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0))`` averaged over patches."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_loss(
    fake_logits: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, lambda_l1: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, gan, l1)`` with ``total = BCE(D(x, G(x)), 1) + lambda_l1 * mean |G(x) - y|``."""
    gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    l1 = F.l1_loss(fake, target)
    return gan + lambda_l1 * l1, gan, l1


@dataclass
class Pix2Pix:
    """The two networks, their optimisers and the config."""

    config: Pix2PixConfig
    generator: UNetGenerator
    discriminator: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @classmethod
    def build(cls, config: Pix2PixConfig, device: str | torch.device = "cpu", seed: int = 0) -> Pix2Pix:
        """Fresh networks with pix2pix's initialisation drawn from ``seed`` (the global RNG is untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = UNetGenerator(
                config.in_channels, config.out_channels, config.width, config.depth, config.dropout
            )
            discriminator = PatchDiscriminator(config.in_channels + config.out_channels, config.disc_width)
        generator.to(device)
        discriminator.to(device)
        betas = (config.beta1, config.beta2)
        return cls(
            config,
            generator,
            discriminator,
            torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas),
        )


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the generator's Tanh range)."""
    return images * 2.0 - 1.0


def from_model_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def train_step(model: Pix2Pix, phase: torch.Tensor, brightfield: torch.Tensor) -> dict[str, float]:
    """One pix2pix update: the discriminator on (real, fake) pairs, then the generator.

    Args:
        model: networks and optimisers (both networks are put in training mode).
        phase: ``(B, in, H, W)`` in [-1, 1].
        brightfield: ``(B, out, H, W)`` in [-1, 1], the real planes of the same samples.

    Returns:
        ``{"loss_d", "loss_g", "loss_g_gan", "loss_g_l1"}`` as floats.

    Raises:
        TrainingDiverged: a loss is NaN or infinite.
    """
    generator, discriminator = model.generator, model.discriminator
    generator.train()
    discriminator.train()
    fake = generator(phase)
    # discriminator: real pairs -> 1, generated pairs -> 0 (the generator is not updated here)
    real_logits = discriminator(torch.cat([phase, brightfield], dim=1))
    fake_logits = discriminator(torch.cat([phase, fake.detach()], dim=1))
    loss_d = discriminator_loss(real_logits, fake_logits)
    model.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    model.opt_d.step()
    # generator: fool the updated discriminator and stay close to the real planes
    fake_logits = discriminator(torch.cat([phase, fake], dim=1))
    loss_g, gan, l1 = generator_loss(fake_logits, fake, brightfield, model.config.lambda_l1)
    model.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    model.opt_g.step()
    losses = {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "loss_g_gan": gan.item(),
        "loss_g_l1": l1.item(),
    }
    if not all(math.isfinite(v) for v in losses.values()):
        raise TrainingDiverged(f"pix2pix losses became non-finite: {losses}")
    return losses


def _pad_mode(height: int, width: int, pad_h: int, pad_w: int) -> str:
    """Reflect padding where the image is large enough for it, else replicate."""
    return "reflect" if pad_h < height and pad_w < width else "replicate"


@torch.no_grad()
def translate(
    generator: UNetGenerator,
    phase: np.ndarray | torch.Tensor,
    seed: int = 0,
    *,
    dropout: bool = True,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Brightfield planes of one phase image.

    The image is padded (reflect) to sides divisible by ``2**depth``, translated whole (the network is
    fully convolutional) and cropped back. BatchNorm uses its running statistics; dropout stays on unless
    ``dropout=False`` (module docstring), drawn from ``seed`` without touching the global RNG. cuDNN runs
    its deterministic algorithms here, so one seed gives the same output on CPU and GPU runs alike.

    Args:
        generator: a trained generator.
        phase: ``(H, W)`` in [0, 1].
        seed: seed of the dropout noise.
        dropout: keep dropout on (pix2pix / thesis) or off.
        device: where to run (default: the generator's device).

    Returns:
        ``(out_channels, H, W)`` float32 in [0, 1].
    """
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    image = torch.as_tensor(np.asarray(phase, dtype=np.float32)).to(device)
    if image.ndim != 2:
        raise ValueError(f"phase must be one (H, W) image, got shape {tuple(image.shape)}")
    height, width = image.shape
    side = 2**generator.depth
    pad_h, pad_w = (-height) % side, (-width) % side
    x = to_model_range(image)[None, None]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=_pad_mode(height, width, pad_h, pad_w))
    was_training = generator.training
    generator.eval()
    for module in generator.modules():
        if isinstance(module, nn.Dropout):
            module.train(dropout)
    devices = [device.index or 0] if device.type == "cuda" else []
    # cuDNN may run a transposed convolution with atomics (run to run float noise): ask for its
    # deterministic algorithms, so that a seed gives the same planes on the GPU too
    with torch.random.fork_rng(devices=devices), torch.backends.cudnn.flags(enabled=True, deterministic=True):
        torch.manual_seed(seed)
        out = generator(x)
    generator.train(was_training)
    return from_model_range(out[0, :, :height, :width]).cpu().numpy().astype(np.float32)


def save_pix2pix(
    model: Pix2Pix, path: str | Path, *, epoch: int, history: list[dict[str, float]], seed: int
) -> Path:
    """Write a weights-only-safe checkpoint (config, both state dicts and optimiser states) atomically."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "config": asdict(model.config),
        "generator": model.generator.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "opt_g": model.opt_g.state_dict(),
        "opt_d": model.opt_d.state_dict(),
        "epoch": int(epoch),
        "seed": int(seed),
        "history": [dict(h) for h in history],
    }
    return save_atomic(blob, path)


def load_pix2pix(path: str | Path, device: str | torch.device = "cpu") -> tuple[Pix2Pix, dict[str, Any]]:
    """Rebuild networks and optimisers from :func:`save_pix2pix`'s file.

    Returns:
        ``(model, the checkpoint dict)`` (``epoch``, ``history``, ``seed`` ...).

    Raises:
        BadInputError: missing, unsafe or foreign file, or weights that do not fit the stored config.
    """
    blob = load_checkpoint(path, map_location=device)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(path, "is not a pix2pix checkpoint of `cytobench synth pix2pix-train`")
    try:
        config = Pix2PixConfig(**blob["config"])
        model = Pix2Pix.build(config, device)
        model.generator.load_state_dict(blob["generator"])
        model.discriminator.load_state_dict(blob["discriminator"])
        model.opt_g.load_state_dict(blob["opt_g"])
        model.opt_d.load_state_dict(blob["opt_d"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(path, f"pix2pix checkpoint does not load ({first})") from None
    return model, blob
