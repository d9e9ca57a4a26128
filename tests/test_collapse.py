"""The collapse check: a model that outputs (near) silence is flagged by mss score and mss compare,
even though its framewise sdr (about 0 dB) is above the mixture's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mss_tools.cli.main import main
from mss_tools.metrics import COLLAPSE_LEVEL_DB, collapse_reasons, estimate_level_db


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def baselines(demo_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("baselines")
    for name in ("mixture", "silence"):
        invoke("separate", name, demo_cache, "--split", "test", "-o", folder / name)
        invoke("score", folder / name, "-o", folder / f"{name}.json")
    return folder


def test_estimate_level_is_relative_to_the_reference():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 1000))
    assert estimate_level_db(reference, reference) == pytest.approx(0.0, abs=1e-9)
    assert estimate_level_db(reference, 0.1 * reference) == pytest.approx(-20.0, abs=1e-6)
    assert estimate_level_db(reference, np.zeros_like(reference)) == pytest.approx(-100.0, abs=1e-3)
    assert collapse_reasons(-40.0, 0.1, -25.0) == ["estimates 40 dB below the references (near-silent)",
                                                  "si_sdr 25.1 dB below sdr"]
    assert collapse_reasons(-3.0, 5.0, 4.0) == [] and collapse_reasons(float("nan"), float("nan"), 1.0) == []


def test_silence_is_flagged_and_the_mixture_is_not(baselines, demo_cache):
    silence = json.loads((baselines / "silence.json").read_text())
    mixture = json.loads((baselines / "mixture.json").read_text())
    sources = list(silence["aggregate"])
    assert sorted(silence["collapsed"]) == sorted(sources)
    for stem in sources:
        assert silence["aggregate"][stem]["estimate_level_db"]["median"] < COLLAPSE_LEVEL_DB
        assert "near-silent" in silence["collapsed"][stem][0]
        assert silence["aggregate"][stem]["usdr"]["median"] == pytest.approx(0.0, abs=1e-6)
    assert mixture["collapsed"] == {}
    assert all(mixture["aggregate"][s]["estimate_level_db"]["median"] > 0 for s in sources)


def test_compare_names_the_collapsed_rows(baselines):
    result = invoke("compare", baselines / "mixture.json", baselines / "silence.json")
    note = next(line for line in result.output.splitlines() if line.startswith("Collapse check:"))
    assert "silence/vocals" in note and "mixture/" not in note
    assert "estimate_level_db" not in result.output.split("Collapse check:")[0]  # not a metric of the tables
