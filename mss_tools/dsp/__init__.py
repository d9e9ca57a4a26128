"""Signal processing: the one STFT of the project and the rules that choose its window length.

:class:`STFT` (torch) is imported on first use, so that the window rules of
:mod:`mss_tools.dsp.fft_sizes` stay importable without torch (the report uses them).
"""

from mss_tools.dsp.fft_sizes import fast_fft_size, loss_n_fft, model_n_fft, onset_n_fft, unet_n_fft

__all__ = ["STFT", "fast_fft_size", "loss_n_fft", "model_n_fft", "onset_n_fft", "unet_n_fft"]


def __getattr__(name: str):
    if name == "STFT":
        from mss_tools.dsp.stft import STFT

        return STFT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
