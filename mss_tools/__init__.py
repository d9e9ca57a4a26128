"""mss: a modular toolkit for music source separation research."""

__version__ = "0.1.0"
