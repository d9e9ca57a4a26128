"""NumPy signal analysis for the report (no torch): magnitude spectrograms, onset envelopes, onsets.

Signals are mono ``(time,)`` float arrays. (The project's STFT, :class:`mss_tools.dsp.STFT`,
is a torch module; the report stays importable and fast without torch, and only needs
magnitudes for pictures and onset detection.)
"""

from __future__ import annotations

import numpy as np

from mss_tools.dsp.fft_sizes import onset_n_fft

FRAMES_PER_BLOCK = 2048  # STFT frames computed at once (bounds memory on long tracks)


def magnitude_frames(signal: np.ndarray, n_fft: int, hop_length: int):
    """Yield ``(frames, n_fft // 2 + 1)`` float32 magnitude blocks of a centred, Hann-windowed STFT.

    Frame ``i`` is centred on sample ``i * hop_length``; there are ``len(signal) // hop_length + 1`` frames.
    """
    signal = np.asarray(signal, dtype=np.float32)
    padded = np.pad(signal, (n_fft // 2, n_fft // 2))
    if padded.size < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.size))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    total = signal.size // hop_length + 1
    for first in range(0, total, FRAMES_PER_BLOCK):
        count = min(FRAMES_PER_BLOCK, total - first)
        starts = (first + np.arange(count)) * hop_length
        starts = np.minimum(starts, padded.size - n_fft)
        frames = padded[starts[:, None] + np.arange(n_fft)] * window
        yield np.abs(np.fft.rfft(frames, axis=-1)).astype(np.float32)


def spectrogram_db(signal: np.ndarray, n_fft: int = 512, hop_length: int = 128) -> np.ndarray:
    """Power spectrogram in dB, ``(n_fft // 2 + 1, frames)`` float32 (low frequencies first)."""
    blocks = list(magnitude_frames(signal, n_fft, hop_length))
    magnitude = np.concatenate(blocks, axis=0).T
    return (20 * np.log10(magnitude + 1e-6)).astype(np.float32)


def mel_rows(spectrogram: np.ndarray, sample_rate: int, rows: int = 160) -> np.ndarray:
    """Resample the frequency axis of a ``(freq, frames)`` spectrogram (bins 0..Nyquist) to ``rows``
    mel-spaced frequencies (linear interpolation between bins): ``(rows, frames)``, low frequencies first.
    """
    bins = spectrogram.shape[0]
    nyquist_mel = 2595 * np.log10(1 + sample_rate / 2 / 700)
    hertz = 700 * (10 ** (np.linspace(0, nyquist_mel, rows) / 2595) - 1)
    position = hertz / (sample_rate / 2) * (bins - 1)
    lower = np.clip(np.floor(position).astype(int), 0, bins - 2)
    weight = (position - lower)[:, None]
    return ((1 - weight) * spectrogram[lower] + weight * spectrogram[lower + 1]).astype(np.float32)


def onset_envelope(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Spectral flux ``(frames,)`` of log-compressed magnitudes and its frame rate (frames per second).

    Flux of frame ``i``: sum over frequencies of the positive increase of ``log(1 + 100 |X|)``
    from frame ``i - 1`` (0 for the first frame).
    """
    n_fft = onset_n_fft(sample_rate)
    hop_length = n_fft // 4
    flux, previous = [], None
    for block in magnitude_frames(signal, n_fft, hop_length):
        compressed = np.log1p(100.0 * block)
        before = np.vstack([compressed[:1] if previous is None else previous, compressed[:-1]])
        flux.append(np.maximum(compressed - before, 0.0).sum(axis=1))
        previous = compressed[-1:]
    return np.concatenate(flux).astype(np.float64), sample_rate / hop_length


def moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average ``(n,)`` over ``width`` samples (edges averaged over what exists)."""
    width = max(1, int(width))
    kernel = np.ones(width)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(np.ones_like(values), kernel, mode="same")
    return total / count


def pick_onsets(envelope: np.ndarray, frame_rate: float, delta: float = 0.1, spacing: float = 0.03,
                context: float = 0.5) -> np.ndarray:
    """Frame indices of onsets: local maxima of ``envelope`` (within ``±spacing`` s) that exceed its
    moving average over ``context`` s by ``delta`` times the track's 99th percentile.
    """
    if envelope.size < 3:
        return np.zeros(0, dtype=np.int64)
    scale = float(np.percentile(envelope, 99))
    if scale <= 1e-6:
        return np.zeros(0, dtype=np.int64)
    radius = max(1, int(round(spacing * frame_rate)))
    padded = np.pad(envelope, radius, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)
    is_peak = envelope >= windows.max(axis=1)
    threshold = moving_average(envelope, int(round(context * frame_rate))) + delta * scale
    return np.flatnonzero(is_peak & (envelope > threshold))


def periodicity(envelope: np.ndarray, frame_rate: float, min_lag: float = 1.5, max_lag: float = 4.0) -> float:
    """Largest normalised autocorrelation ``[0, 1]`` of an onset envelope at lags of ``min_lag``..``max_lag`` s
    (a bar at 60-160 beats per minute in 4/4): high for passages that repeat bar by bar.
    """
    centred = envelope - envelope.mean()
    energy = float(np.dot(centred, centred))
    first = max(1, int(round(min_lag * frame_rate)))
    last = min(int(round(max_lag * frame_rate)), centred.size // 2)
    if energy <= 0 or last < first:
        return 0.0
    n = centred.size
    spectrum = np.fft.rfft(centred, 2 * n)
    autocorrelation = np.fft.irfft(spectrum * np.conj(spectrum), 2 * n)[:n]
    lags = np.arange(first, last + 1)
    unbiased = autocorrelation[lags] / energy * n / (n - lags)
    return float(np.clip(unbiased.max(), 0.0, 1.0))
