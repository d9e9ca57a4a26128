"""What goes wrong outside the code: a torch/torchaudio pair that does not load, and
filesystem faults. Each becomes one line for the command line (no traceback)."""

from __future__ import annotations

import importlib.metadata
import re
import traceback

from mss_tools.outputs import describe_os_error

TORCH_PACKAGES = ("torch", "torchaudio")


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pinned_versions() -> dict[str, str]:
    """The exact pins of the torch pair in this package's requirements (setup.cfg)."""
    pins = {}
    try:
        requirements = importlib.metadata.requires("mss-tools") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        match = re.match(r"^(torch|torchaudio)==([^;\s]+)", requirement)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def _in_torch_import(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while importing torch or torchaudio (or loading their libraries)."""
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in TORCH_PACKAGES:
        return True
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = re.split(r"[\\/]", frame.filename)
        if any(p in TORCH_PACKAGES for p in parts[-4:-1]) and ("_extension" in parts or frame.name in (
                "<module>", "load_library", "_load_lib", "_load_global_deps")):
            return True
    return False


def torch_load_message(exc: BaseException) -> str:
    """One line: what failed to load, the installed versions, and the fix."""
    versions = ", ".join(f"{name} {installed_version(name)}" for name in TORCH_PACKAGES)
    pins = pinned_versions()
    wanted = " ".join(f"{name}=={pins[name]}" for name in TORCH_PACKAGES if name in pins) or "torch torchaudio"
    cause = exc.__cause__ or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return (f"torch/torchaudio cannot be loaded ({reason}); installed: {versions}; torchaudio loads only with the "
            f"torch it was built for: pip install -c constraints.txt {wanted}")


def describe_failure(exc: BaseException) -> str | None:
    """The one-line message for an environment or filesystem failure, or None for anything else."""
    if _in_torch_import(exc):
        return torch_load_message(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return None
