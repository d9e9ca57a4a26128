"""The research questions as planned comparisons: Holm-corrected, with CIs, effect sizes and verdicts,
first in RESULTS.md and in the HTML report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import wilcoxon

from mss_tools.cli.main import main
from mss_tools.report.questions import holm

SOURCES = ("vocals", "drums", "bass", "other")


def write_scores(path, sdr_by_track: dict[str, dict[str, float]]):
    tracks = {track: {stem: {"usdr": value, "sdr": value} for stem, value in stems.items()}
              for track, stems in sdr_by_track.items()}
    path.write_text(json.dumps({"format": "mss-scores", "format_version": 1, "tracks": tracks}))
    return path


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_answers_open_the_report_with_corrected_p_and_verdicts(tmp_path):
    rng = np.random.default_rng(0)
    tracks = [f"t{i:02d}" for i in range(16)]
    base = {t: {s: rng.normal(4, 1) for s in SOURCES} for t in tracks}
    better = {t: {s: v + 2 + rng.normal(0, 0.3) for s, v in stems.items()} for t, stems in base.items()}
    same = {t: {s: v + rng.normal(0, 0.3) for s, v in stems.items()} for t, stems in base.items()}
    files = [write_scores(tmp_path / "unet.json", base), write_scores(tmp_path / "demucs_lstm.json", better),
             write_scores(tmp_path / "unet_nocurriculum.json", same)]
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["compare", *map(str, files), "-o", str(out), "--no-listening"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("## Answers")
    lines = [line for line in result.stdout.splitlines() if line.startswith("- **Q")]
    assert [line.split("**")[1] for line in lines] == ["Q1", "Q5"]  # the questions these runs can answer
    q1_diff = np.array([np.mean([better[t][s] - base[t][s] for s in SOURCES]) for t in tracks])
    q5_diff = np.array([np.mean([base[t][s] - same[t][s] for s in SOURCES]) for t in tracks])
    holm_p = holm([wilcoxon(q1_diff).pvalue, wilcoxon(q5_diff).pvalue])
    assert f"{q1_diff.mean():+.2f} dB sdr" in lines[0] and "n = 16 tracks" in lines[0]
    assert f"d_z {q1_diff.mean() / q1_diff.std(ddof=1):+.2f}" in lines[0] and "**demucs_lstm better**" in lines[0]
    assert ("<0.001" if holm_p[0] < 0.001 else f"{holm_p[0]:.3f}") in lines[0]
    assert "unet − unet_nocurriculum" in lines[1]
    assert "inconclusive" in lines[1] or ("better" in lines[1] and abs(q5_diff.mean()) > 0.05)
    assert (out / "RESULTS.md").read_text().startswith("# Results\n\n## Answers")
    page = (out / "index.html").read_text()
    assert page.index('id="answers"') < page.index('id="models"') and "demucs_lstm better" in page


def test_q2_is_about_drums(tmp_path):
    rng = np.random.default_rng(1)
    tracks = [f"t{i}" for i in range(8)]
    lstm = {t: {s: rng.normal(3, 1) for s in SOURCES} for t in tracks}
    attn = {t: {s: v - 1.0 if s == "drums" else v + 5.0 for s, v in stems.items()} for t, stems in lstm.items()}
    files = [write_scores(tmp_path / "demucs_lstm.json", lstm), write_scores(tmp_path / "demucs_attn.json", attn)]
    result = CliRunner().invoke(main, ["compare", *map(str, files)])
    line = next(line for line in result.output.splitlines() if line.startswith("- **Q2**"))
    assert "(drums)" in line and "-1.00 dB sdr" in line and "**demucs_lstm better**" in line


def test_seeds_of_a_model_are_compared_as_one_with_their_spread(tmp_path):
    rng = np.random.default_rng(2)
    tracks = [f"t{i:02d}" for i in range(10)]
    base = {t: {s: rng.normal(4, 1) for s in SOURCES} for t in tracks}
    seeds = [{t: {s: v + 1.0 + k + rng.normal(0, 0.1) for s, v in stems.items()} for t, stems in base.items()}
             for k in range(3)]
    files = [write_scores(tmp_path / "unet.json", base)]
    files += [write_scores(tmp_path / f"demucs_lstm.seed{k + 1}.json", seeds[k]) for k in range(3)]
    result = CliRunner().invoke(main, ["compare", *map(str, files)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "| demucs_lstm |" in out and ".seed" not in out.split("## Paired statistics")[0].split("Seeds:")[0]
    per_track = np.array([np.mean([np.mean([seeds[k][t][s] for k in range(3)]) - base[t][s] for s in SOURCES])
                          for t in tracks])
    line = next(line for line in out.splitlines() if line.startswith("- **Q1**"))
    assert f"{per_track.mean():+.2f} dB sdr" in line and "n = 10 tracks × 1 seed" in line  # unet has one seed
    medians = [np.median([seeds[k][t]["vocals"] for t in tracks]) for k in range(3)]
    note = next(line for line in out.splitlines() if line.startswith("Seeds:"))
    assert "demucs_lstm 3 seeds" in note and f"vocals {np.std(medians, ddof=1):.2f}" in note
    vocals_row = next(line for line in out.splitlines() if line.startswith("| demucs_lstm |"))
    expected = np.median([np.mean([seeds[k][t]["vocals"] for k in range(3)]) for t in tracks])
    assert f"{expected:.2f}" in vocals_row
