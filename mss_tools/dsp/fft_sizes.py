"""How long an STFT window is for a sample rate: the project's four rules (arithmetic only, no torch),
and FFT sizes that are fast to compute.

Every rule aims at about 46 ms of audio, the 2048-point window at 44.1 kHz that the
spectrogram papers use; they differ in the floor and in how they round.
"""

from __future__ import annotations

import math

PAPER_WINDOW_SECONDS = 2048 / 44100  # about 46.4 ms
ONSET_WINDOW_SECONDS = 0.046


def nearest_power_of_two(samples: float) -> int:
    """The power of two nearest to ``samples`` on a log scale."""
    return 2 ** round(math.log2(samples))


def fast_fft_size(samples: int) -> int:
    """The smallest ``2**a * 3**b`` at or above ``samples``: an FFT of that size takes a fraction of
    the time of one of a size with a large prime factor (371 points: 7 x 53)."""
    sizes, power_of_three = [], 1
    while True:
        quotient = -(-samples // power_of_three)  # rounded up; then the power of two at or above it
        sizes.append(power_of_three << (quotient - 1).bit_length())
        if power_of_three >= samples:
            return min(sizes)
        power_of_three *= 3


def model_n_fft(sample_rate: int) -> int:
    """The paper window scaled to ``sample_rate``, as the nearest power of two (BSRNN).

    2048 at 44.1 and 48 kHz, 1024 at 16 to 22.05 kHz, 512 at 8 kHz.
    """
    return nearest_power_of_two(sample_rate * PAPER_WINDOW_SECONDS)


def unet_n_fft(sample_rate: int) -> int:
    """:func:`model_n_fft`, but never below 64 (the spectrogram U-Nets)."""
    return max(64, model_n_fft(sample_rate))


def loss_n_fft(sample_rate: int) -> int:
    """4096 above 32 kHz, else 2048: the spectral losses' window for a model without an STFT of its own."""
    return 4096 if sample_rate > 32000 else 2048


def onset_n_fft(sample_rate: int) -> int:
    """The power of two nearest to 46 ms, at least 16 (the report's onset analysis)."""
    return nearest_power_of_two(max(16.0, ONSET_WINDOW_SECONDS * sample_rate))
