"""DiffraGAN's two networks: a U-Net generator and a conditional PatchGAN discriminator.

Both use GroupNorm, not BatchNorm: in eval mode a particle's output must not depend on the
batch it was phased in (the reference code ran BatchNorm and Dropout in training mode at
inference, so its outputs were random). The generator may end with a data-consistency
projection: its output's Fourier magnitudes are replaced by the measured ones where they were
measured, keeping its phases — the measured diffraction then constrains every output.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = min(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.LeakyReLU(0.2, inplace=True),
    )


class UNetGenerator(nn.Module):
    """U-Net with skip connections: `depth` halvings, `width` channels at the top, doubling down."""

    def __init__(self, in_channels: int, out_channels: int = 1, width: int = 32, depth: int = 4):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class ResidualRefiner(UNetGenerator):
    """A U-Net that corrects an estimate: output = the estimate channel (`base_channel`) + the
    U-Net's output. An untrained refiner starts near the engine's result, not near zero."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 4, base_channel: int = 1):
        super().__init__(in_channels, 1, width, depth)
        self.base_channel = base_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.base_channel : self.base_channel + 1] + super().forward(x)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: judges (inputs, image) in overlapping patches; one logit per patch.

    `layers` stride-2 convolutions set the patch (receptive field): 3 → 34 px, 2 → 16 px."""

    def __init__(self, in_channels: int, width: int = 32, layers: int = 2):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels + 1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = width
        for _ in range(layers - 1):
            modules += [nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1), nn.GroupNorm(8, channels * 2),
                        nn.LeakyReLU(0.2, True)]
            channels *= 2
        modules += [nn.Conv2d(channels, channels, 4, padding=1), nn.GroupNorm(8, channels), nn.LeakyReLU(0.2, True),
                    nn.Conv2d(channels, 1, 4, padding=1)]
        self.net = nn.Sequential(*modules)

    def forward(self, inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([inputs, image], dim=1))


def data_consistency(image: torch.Tensor, amplitude: torch.Tensor, known: torch.Tensor, grid_px: int) -> torch.Tensor:
    """Replace the Fourier magnitudes of `image` (B, 1, S, S; σV on the image grid, centred in an
    object grid of `grid_px`) by `amplitude` where `known`; phases are kept. amplitude and known
    are (B, grid, grid//2+1) in rfft2 layout, as `measured_amplitudes` gives them."""
    size = image.shape[-1]
    start = grid_px // 2 - size // 2
    padded = nn.functional.pad(image[:, 0], (start, grid_px - size - start, start, grid_px - size - start))
    spectrum = torch.fft.rfft2(padded)
    magnitude = spectrum.abs().clamp_min(1e-12)
    spectrum = torch.where(known, spectrum / magnitude * amplitude, spectrum)
    out = torch.fft.irfft2(spectrum, s=(grid_px, grid_px))
    return out[:, None, start : start + size, start : start + size]
