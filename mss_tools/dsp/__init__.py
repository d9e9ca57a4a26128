"""Signal processing: the one STFT of the project, masks."""

from mss_tools.dsp.stft import STFT

__all__ = ["STFT"]
