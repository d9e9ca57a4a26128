"""mss compare: tables, paired statistics, plots, excerpt choice and the HTML report, on synthesized inputs.

The fixture builds a tiny stem cache (8 kHz, stems vocals and drums), two models' predictions
and their score files by hand, with known properties: the drums of track ``clicks`` have
clicks in seconds 4-6 only, and the two models' framewise vocals sdr disagree most at
8-9 s of ``song3``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from scipy.stats import wilcoxon

from mss_tools.cache import StemCache, assemble_cache, write_track_part
from mss_tools.cli.main import main
from mss_tools.report import compare, load_runs
from mss_tools.report import stats
from mss_tools.report.excerpts import choose_excerpts
from tests.conftest import run_mss

RATE = 8000
SECONDS = 10
SOURCES = ["vocals", "drums"]
TRACKS = ["clicks"] + [f"song{i}" for i in range(1, 8)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def drums_for(track: str, rng: np.random.Generator) -> np.ndarray:
    """Mono drums: clicks every 0.1 s in 4-6 s for ``clicks``; elsewhere one decaying noise burst a second."""
    length = RATE * SECONDS
    mono = 1e-4 * rng.standard_normal(length)
    if track == "clicks":
        for t in np.arange(4.0, 6.0, 0.1):
            start = int(t * RATE)
            mono[start:start + 40] += 0.6 * np.exp(-np.arange(40) / 8.0) * rng.choice([-1, 1], 40)
    else:
        burst = 0.3 * rng.standard_normal(800) * np.exp(-np.arange(800) / 150.0)
        for second in range(SECONDS):
            start = second * RATE + 1000
            mono[start:start + 800] += burst
    return mono


def frames_for(stem_index: int, track_index: int, model: str) -> list:
    base = [2.0 + 0.3 * stem_index + 0.1 * track_index + 0.05 * f for f in range(SECONDS)]
    if model == "b":
        base = [v - 0.5 - 0.2 * track_index for v in base]
    base[0] = None  # a silent first frame, as BSSEval writes it
    if track_index == 3 and stem_index == 0:
        base[8] = 20.0 if model == "a" else -20.0
    return base


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """``{"root", "cache", "scores": [a.json, b.json], "values": {model: {stem: {track: sdr}}}}``."""
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    t = np.arange(RATE * SECONDS) / RATE
    parts, references = [], {}
    for index, track in enumerate(TRACKS):
        vocals = 0.2 * np.sin(2 * np.pi * (220 + 20 * index) * t)
        stems = {"vocals": np.stack([vocals, vocals]).astype(np.float32),
                 "drums": np.repeat(drums_for(track, rng)[None], 2, axis=0).astype(np.float32)}
        references[track] = stems
        part = root / "parts" / f"{track}.h5"
        write_track_part(part, "test", track, stems, stems["vocals"] + stems["drums"], RATE,
                         {"name": track, "length": RATE * SECONDS})
        parts.append(part)
    cache = root / "cache.h5"
    assemble_cache(cache, parts, {"format": "mss-stems", "format_version": 1, "sample_rate": RATE,
                                  "sources": SOURCES, "channels": 2, "rms_hop": 0.5, "fingerprint": "test"})
    scores, values = [], {}
    for model, noise, params in (("a", 0.01, 12345), ("b", 0.05, 2_500_000)):
        exp = root / "exp" / model
        exp.mkdir(parents=True)
        (exp / "provenance.json").write_text(json.dumps({"num_parameters": params}))
        preds = root / "preds" / model
        manifest = {"format": "mss-predictions", "format_version": 1, "checkpoint": str(exp / "best.pt"),
                    "arch": "unet", "tracks": []}
        if model == "a":  # timing in total; estimates at <track>/<stem>.wav
            manifest["timing"] = {"audio_seconds": 80.0, "wall_seconds": 40.0}
        tracks = {}
        for track_index, track in enumerate(TRACKS):
            tracks[track] = {}
            files = {stem: f"{track}/{stem}.wav" if model == "a" else f"{stem}/{track}.flac" for stem in SOURCES}
            if model == "b":  # timing per track only; estimates where the manifest's "files" say
                manifest["tracks"].append({"track": track, "audio_seconds": 10.0, "wall_seconds": 2.5, "files": files})
            for stem_index, stem in enumerate(SOURCES):
                estimate = references[track][stem] + noise * rng.standard_normal((2, RATE * SECONDS))
                (preds / files[stem]).parent.mkdir(parents=True, exist_ok=True)
                sf.write(preds / files[stem], np.clip(estimate.T, -1, 1), RATE, subtype="PCM_16")
                frames = frames_for(stem_index, track_index, model)
                sdr = float(np.median([f for f in frames if f is not None]))
                tracks[track][stem] = {"usdr": sdr + 1.0 + 0.01 * track_index, "si_sdr": sdr - 1.0, "sdr": sdr,
                                       "frames": {"sdr": frames}}
                values.setdefault(model, {}).setdefault(stem, {})[track] = tracks[track][stem]
        (preds / "manifest.json").write_text(json.dumps(manifest))
        document = {"format": "mss-scores", "format_version": 1, "predictions": str(preds),
                    "references": str(cache), "metrics": ["usdr", "si_sdr", "sdr"], "backend": "mss",
                    "window_seconds": 1.0, "hop_seconds": 1.0, "tracks": tracks, "aggregate": {},
                    "model": {"checkpoint": str(exp / "best.pt"), "arch": "unet"}}
        path = root / "scores" / f"{model}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(document))
        scores.append(path)
    return {"root": root, "cache": cache, "scores": scores, "values": values}


@pytest.fixture(scope="module")
def report(project):
    """The report folder and stdout of ``mss compare a.json b.json -o report`` (one excerpt per category)."""
    out = project["root"] / "report"
    result = CliRunner().invoke(main, ["compare", *map(str, project["scores"]), "-o", str(out), "--excerpts", "1",
                                       "--excerpt-seconds", "4", "--bootstrap", "2000", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tables_equal_independent_medians_and_means(project, report):
    out, stdout = report
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == ["source", "model", "metric", "median", "mean", "tracks"]
    assert len(rows) == len(SOURCES) * 2 * 3
    for row in rows:
        values = [v[row["metric"]] for v in project["values"][row["model"]][row["source"]].values()]
        assert float(row["median"]) == pytest.approx(np.median(values))
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert int(row["tracks"]) == len(TRACKS)
    a_vocals_sdr = np.median([v["sdr"] for v in project["values"]["a"]["vocals"].values()])
    assert f"{a_vocals_sdr:.2f}" in stdout
    assert "### vocals" in stdout and "| a | 12.3 k | 2x RT |" in stdout and "| b | 2.5 M | 4x RT |" in stdout
    models = read_csv(out / "models.csv")
    assert [(m["model"], m["num_parameters"], m["speed_x_realtime"]) for m in models] == [
        ("a", "12345", "2.0"), ("b", "2500000", "4.0")]


def test_paired_statistics_match_numpy_and_scipy(project, report):
    out, stdout = report
    rows = read_csv(out / "pairs.csv")
    assert list(rows[0]) == ["source", "metric", "model_a", "model_b", "n", "median_diff", "mean_diff", "ci_low",
                             "ci_high", "wilcoxon_p", "a_better", "b_better", "note"]
    assert {(r["source"], r["metric"]) for r in rows} == {(s, m) for s in SOURCES for m in ("sdr", "usdr")}
    for row in rows:
        a, b = (project["values"][m][row["source"]] for m in ("a", "b"))
        diff = np.array([a[t][row["metric"]] - b[t][row["metric"]] for t in sorted(a)])
        assert (row["model_a"], row["model_b"], int(row["n"])) == ("a", "b", len(TRACKS))
        assert float(row["median_diff"]) == pytest.approx(np.median(diff))
        assert float(row["mean_diff"]) == pytest.approx(np.mean(diff))
        assert float(row["wilcoxon_p"]) == pytest.approx(wilcoxon(diff).pvalue)
        assert float(row["ci_low"]) <= np.mean(diff) <= float(row["ci_high"])
        assert int(row["a_better"]) == int((diff > 0).sum()) and int(row["b_better"]) == int((diff < 0).sum())
    assert "## Paired statistics" in stdout and "Paired differences: sdr (A − B, dB)" in stdout
    assert "| vocals | a | b | 8 |" in stdout


def test_bootstrap_is_seeded_and_wilcoxon_needs_six():
    rng = np.random.default_rng(1)
    diff = rng.normal(0.5, 1.0, 20)
    first = stats.bootstrap_ci(diff, 5000, seed=7)
    assert first == stats.bootstrap_ci(diff, 5000, seed=7)
    assert first != stats.bootstrap_ci(diff, 5000, seed=8)
    assert first[0] < diff.mean() < first[1]
    # the percentile interval of vectorised resampled means, recomputed the slow way
    draws = np.random.default_rng(7).integers(0, diff.size, size=(5000, diff.size))
    assert first == pytest.approx(tuple(np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])))
    for small in (np.array([1.0, -2.0, 3.0, 0.5, 2.0]), np.zeros(10), np.array([0, 0, 0, 0, 1.0, 2, 3, 4, 5])):
        p, note = stats.wilcoxon_p(small)
        assert math.isnan(p) and "n too small" in note
    p, note = stats.wilcoxon_p(diff)
    assert p == pytest.approx(wilcoxon(diff).pvalue) and note == ""
    assert stats.fmt_p(math.nan) == "n too small"


def test_plots_are_png_and_svg(report):
    out, _ = report
    for name in ("quality_cost", "sdr_boxplot", "diff_01_a_vs_b"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        svg = (out / "plots" / f"{name}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg
    markdown = (out / "RESULTS.md").read_text()
    assert markdown.startswith("# Results") and "](plots/sdr_boxplot.png)" in markdown


def test_html_is_self_contained_with_aligned_players(report):
    out, _ = report
    page = (out / "index.html").read_text()
    articles = page.count('<article class="excerpt"')
    assert articles == 3  # one excerpt per category
    assert page.count("<audio") == articles * (2 + 2)  # mixture, reference, a, b
    assert page.count('src="data:audio/flac;base64,') == articles * 4
    assert page.count('src="data:image/jpeg;base64,') == articles * 4
    assert page.count('src="data:image/png;base64,') == 3  # quality against cost, boxplot, one pair's differences
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)=["'](?!data:|#|plots/)""", page)
    for text in ("Transient attacks", "Long repetitive structure", "Largest disagreement", "12,345", "2x RT",
                 "Wilcoxon p", "mono downmix at 8000 Hz"):
        assert text in page


def test_excerpts_pick_clicks_and_the_largest_disagreement(project):
    runs = load_runs(project["scores"])
    cache = StemCache(project["cache"])
    excerpts, notes = choose_excerpts(runs, cache, lambda run, track, stem: run.estimate_path(track, stem) is not None,
                                      seconds=4.0, per_category=1)
    chosen = {e.category: e for e in excerpts}
    transient = chosen["transients"]
    assert (transient.track, transient.stem) == ("clicks", "drums")
    assert transient.start <= 4.0 + 0.1 and transient.stop >= 6.0 - 0.1
    disagreement = chosen["disagreement"]
    assert (disagreement.track, disagreement.stem) == ("song3", "vocals")
    assert disagreement.start <= 8.0 and disagreement.stop >= 9.0
    assert "40.0 dB" in disagreement.reason
    assert chosen["repetition"].stem == "drums" and not notes
    for e in excerpts:
        assert e.stop - e.start == pytest.approx(4.0)


def test_scores_only_skips_listening_and_no_listening_flag(project, tmp_path):
    document = json.loads(project["scores"][0].read_text())
    document["predictions"] = str(tmp_path / "gone")
    moved = tmp_path / "a.json"
    moved.write_text(json.dumps(document))
    text = compare([moved], tmp_path / "report", bootstrap=100)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<audio" not in page and "scores only" in page
    assert "Paired" not in text and "| a | 12.3 k |  |" in text  # one model: no pairs; no manifest: no speed
    compare(project["scores"][:1], tmp_path / "quiet", listening=False, bootstrap=100)
    page = (tmp_path / "quiet" / "index.html").read_text()
    assert "<audio" not in page and "--no-listening" in page


def test_bad_score_files_exit_2_with_one_line(project, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "mss-scores", "tracks": ')
    result = CliRunner().invoke(main, ["compare", str(project["scores"][0]), str(corrupt)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "corrupt.json" in result.stderr and "Traceback" not in result.output
    twin = tmp_path / "other" / "a.json"
    twin.parent.mkdir()
    shutil.copy(project["scores"][0], twin)
    result = CliRunner().invoke(main, ["compare", str(project["scores"][0]), str(twin)])
    assert result.exit_code == 2 and "distinct names" in result.stderr and result.stderr.count("\n") == 1
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "no such score file" in result.stderr


def test_subprocess_prints_tables_and_statistics(project):
    process = run_mss("compare", *project["scores"], "--bootstrap", "200")
    assert process.returncode == 0, process.stderr
    assert "### drums" in process.stdout and "| drums | a | b | 8 |" in process.stdout


def test_help_imports_neither_torch_nor_matplotlib():
    code = ("import sys; from click.testing import CliRunner; from mss_tools.cli.main import main; "
            "r = CliRunner().invoke(main, ['compare', '--help']); assert r.exit_code == 0, r.output; "
            "assert 'Example' in r.output and '--no-listening' in r.output; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    screenshot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
                    "--window-size=1400,2400", (out / "index.html").resolve().as_uri()],
                   capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == PNG_MAGIC
    assert screenshot.stat().st_size > 50_000
    assert not re.search(r"https?://", (out / "index.html").read_text())


def test_ill_conditioned_tracks_leave_isr_sir_sar_out(project, tmp_path):
    document = json.loads(project["scores"][0].read_text())
    for index, (track, stems) in enumerate(document["tracks"].items()):
        for stem in stems.values():
            stem.update(isr=10.0 + index, sir=20.0 + index, sar=30.0 + index)
            stem["frames"].update(sir=[20.0 + index] * SECONDS)
        if index < 3:  # flagged: clicks, song1, song2
            for stem in stems.values():
                stem["ill_conditioned"] = True
    document["metrics"] += ["isr", "sir", "sar"]
    flagged = tmp_path / "flagged.json"
    flagged.write_text(json.dumps(document))
    run = load_runs([flagged])[0]
    assert "ill_conditioned" not in run.metrics("vocals")
    assert run.ill_conditioned("vocals") == {"clicks", "song1", "song2"}
    assert sorted(run.track_values("vocals", "sir").values()) == [20.0 + i for i in range(3, 8)]
    assert len(run.track_values("vocals", "sdr")) == len(TRACKS)
    assert set(run.frames("vocals", "sir")) == set(TRACKS[3:])
    text = compare([flagged], tmp_path / "report", listening=False, bootstrap=100)
    assert "ill_conditioned" not in text.split("isr/sir/sar leave out")[0]
    assert "ill-conditioned (flagged 6)" in text  # 3 tracks x 2 sources
    rows = [r for r in read_csv(tmp_path / "report" / "results.csv") if r["model"] == "flagged"]
    sir = next(r for r in rows if r["source"] == "vocals" and r["metric"] == "sir")
    assert float(sir["median"]) == 25.0 and sir["tracks"] == "5"
    for stems in document["tracks"].values():
        for stem in stems.values():
            stem["ill_conditioned"] = True
    flagged.write_text(json.dumps(document))
    text = compare([flagged], None)
    assert "sir median" not in text and "sdr median" in text  # no track left: the column goes


def test_many_models_plot_control_and_baseline_pairs_only():
    from mss_tools.report.plots import MAX_PAIR_PLOTS, plotted_pairs
    from mss_tools.report.runs import Run

    labels = ["mixture"] + [f"{arch}{suffix}" for arch in ("unet", "demucs", "bsrnn", "bsrnn_se", "unet_lite")
                            for suffix in ("", "_nocurriculum")]
    runs = [Run(label, Path(f"{label}.json"), {}) for label in labels]
    pairs = [(a.label, b.label) for a, b in plotted_pairs(runs)]
    assert pairs[:5] == [(arch, f"{arch}_nocurriculum") for arch in ("unet", "demucs", "bsrnn", "bsrnn_se",
                                                                       "unet_lite")]
    assert pairs[5:] == [("mixture", arch) for arch in ("unet", "demucs", "bsrnn", "bsrnn_se", "unet_lite")]
    assert len(plotted_pairs(runs[:5])) == 10 <= MAX_PAIR_PLOTS  # few models: every pair


def test_speed_is_the_median_over_tracks():
    from mss_tools.report.runs import separation_speed

    manifest = {"timing": {"audio_seconds": 36.0, "wall_seconds": 11.2},
                "tracks": [{"audio_seconds": 12.0, "wall_seconds": w} for w in (0.5, 0.48, 10.3)]}
    assert separation_speed(manifest)[0] == pytest.approx(24.0)
    assert separation_speed({"timing": {"audio_seconds": 36.0, "wall_seconds": 12.0}})[0] == pytest.approx(3.0)


def test_quality_against_cost_is_one_row_per_model_from_the_per_track_values(project, report):
    """sdr per track averaged over the model's sources, then the median over tracks, with its size and speed."""
    out, stdout = report
    assert "## Quality against cost" in stdout
    for model, params, speed in (("a", "12.3 k", "2x RT"), ("b", "2.5 M", "4x RT")):
        values = project["values"][model]
        quality = np.median([np.mean([values[s][t]["sdr"] for s in SOURCES]) for t in TRACKS])
        assert f"| {model} | {params} | {speed} | {quality:.2f} |  |  |  | {', '.join(SOURCES)} |" in stdout
    markdown = (out / "RESULTS.md").read_text()
    assert markdown.index("## Quality against cost") < markdown.index("### vocals")
    assert "](plots/quality_cost.png)" in markdown


def test_a_pair_without_common_defined_values_says_so_instead_of_n_too_small():
    silent = stats.PairedComparison("drums", "sdr", "silence", "model", 0, math.nan, math.nan, math.nan, math.nan,
                                    math.nan, 0, 0, "no paired tracks")
    few = stats.PairedComparison("drums", "sdr", "a", "b", 4, 1.0, 1.0, 0.5, 1.5, math.nan, 4, 0,
                                 "n too small for Wilcoxon (4 non-zero differences)")
    rows = stats.markdown([silent, few], 100, 0).splitlines()
    assert "| drums | silence | model | 0 | nan | nan |  | no paired tracks | 0 / 0 |" in rows
    assert "| drums | a | b | 4 | +1.00 | +1.00 | [+0.50, +1.50] | n too small | 4 / 0 |" in rows
    assert "compare with silence on usdr and si_sdr" in rows[-1]
