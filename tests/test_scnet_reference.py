"""SCNet against the authors' implementation with copied weights: same parameter count, same outputs
and training gradients.

The authors' code is not a package: put its ``scnet.py`` and ``separation.py`` in a folder
``scnet_official/`` (with an empty ``__init__.py``) on ``PYTHONPATH`` in a test environment, e.g.
from a checkout of ZFTurbo/Music-Source-Separation-Training (``models/scnet/``), which carries them.
The tests skip where it cannot be imported.
"""

from __future__ import annotations

import pytest
import torch

from mss_tools.models import build_model
from tests.conftest import assert_same_gradients

SOURCES = ["drums", "bass", "other", "vocals"]


def test_paper_preset_has_the_reference_parameter_count():
    reference_module = pytest.importorskip("scnet_official.scnet")
    ours = build_model("scnet", SOURCES, 2, 44100, preset="paper")
    reference = reference_module.SCNet(sources=SOURCES)
    assert ours.num_parameters == sum(p.numel() for p in reference.parameters())


def small_pair():
    """Ours at the ``small`` preset and the authors' model at the same size, with its weights copied into ours."""
    reference_module = pytest.importorskip("scnet_official.scnet")
    torch.manual_seed(0)
    ours = build_model("scnet", SOURCES, 2, 44100, preset="small")
    config = ours.config
    reference = reference_module.SCNet(
        sources=SOURCES, dims=[4] + [config.channels * 2 ** i for i in range(config.depth)],
        num_dplayer=config.dual_path_layers)
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert [v.shape for v in theirs.values()] == [v.shape for v in mine.values()]
    ours.load_state_dict(dict(zip(mine, theirs.values())))
    return ours, reference


def test_outputs_equal_the_reference_with_copied_weights():
    ours, reference = small_pair()
    mix = 0.3 * torch.randn(1, 2, 3 * 44100 + 123, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(mix), reference.eval()(mix), rtol=1e-4, atol=1e-5)


def test_training_gradients_equal_the_reference_with_copied_weights():
    ours, reference = small_pair()
    mix = 0.3 * torch.randn(1, 2, 44100 + 77, generator=torch.Generator().manual_seed(2))
    for model in (ours, reference):
        out = model.train()(mix)
        (out - 0.1).abs().mean().backward()
    assert_same_gradients(ours, reference.parameters())
