"""The installed environment: the pinned torch/torchaudio pair loads and resamples, the lock
covers the pins, and CI runs the README's test command."""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np

from tests.conftest import REPO


def _pins() -> dict[str, str]:
    pins = {}
    for requirement in importlib.metadata.requires("mss-tools") or []:
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^;\s]+)", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_torch_and_torchaudio_are_the_pinned_pair():
    pins = _pins()
    assert set(pins) >= {"torch", "torchaudio"}, "setup.cfg must pin torch and torchaudio exactly"
    for name in ("torch", "torchaudio"):
        assert importlib.metadata.version(name) == pins[name], f"{name} drifted from its pin"


def test_torchaudio_extension_loads_and_resamples():
    import torch
    import torchaudio
    import torchaudio._extension

    assert torchaudio._extension._IS_TORCHAUDIO_EXT_AVAILABLE
    assert torchaudio.__version__.split("+")[0] == torch.__version__.split("+")[0]
    from mss_tools.audio import resample

    rate, freq = 8000, 440.0
    t = np.arange(rate) / rate
    up = resample(np.sin(2 * np.pi * freq * t)[None].astype(np.float32), rate, 16000)
    assert up.shape == (1, 16000)
    expected = np.sin(2 * np.pi * freq * np.arange(16000) / 16000)
    middle = slice(1000, 15000)  # away from the edges, where the filter sees zeros
    assert np.max(np.abs(up[0, middle] - expected[middle])) < 1e-3


def test_lock_file_holds_every_pin_and_ci_runs_the_readme_command():
    lock = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[name.lower()] = version
    for name, version in _pins().items():
        assert lock.get(name) == version, f"constraints.txt disagrees with setup.cfg on {name}"
    ci_command = [line for line in (REPO / ".ci/run").read_text().splitlines() if "pytest" in line]
    assert len(ci_command) == 1 and ci_command[0] in (REPO / "README.md").read_text()
    assert "-c constraints.txt" in ci_command[0]


def test_a_torchaudio_that_cannot_load_is_one_line_naming_versions_and_fix(tmp_path, stem_folder):
    """A torchaudio built for another torch fails inside its extension loader; mss says so in one line."""
    from tests.conftest import run_mss

    fake = tmp_path / "site"
    package = fake / "torchaudio" / "_extension"
    package.mkdir(parents=True)
    (fake / "torchaudio" / "__init__.py").write_text("from torchaudio import _extension\n")
    (package / "__init__.py").write_text(
        "def _load_lib():\n"
        "    raise OSError('libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')\n"
        "_load_lib()\n")
    info = fake / "torchaudio-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 9.9.9\n")
    root, _, _ = stem_folder
    result = run_mss("prep", "-q", "--sr", "16000", root, tmp_path / "out.h5", env={"PYTHONPATH": str(fake)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "undefined symbol" in lines[0] and "torchaudio 9.9.9" in lines[0]
    assert f"torchaudio=={_pins()['torchaudio']}" in lines[0] and "constraints.txt" in lines[0]
    assert not (tmp_path / "out.h5").exists()
