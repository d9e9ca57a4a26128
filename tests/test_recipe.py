"""The Kaldi-style recipes end to end on a tiny demo corpus: run, rerun (everything skipped), run from a stage."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = ["--preset", "tiny", "--demo-tracks", "6", "--demo-duration", "3", "--jobs", "1",
        "--mss", f"{sys.executable} -m mss_tools"]


def run_recipe(script, *args, cwd):
    return subprocess.run(["bash", str(REPO / "recipes" / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                          **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})


def test_run_all_then_rerun_then_stage(tmp_path):
    exp = tmp_path / "exp"
    first = run_recipe("run_all.sh", "--archs", "unet", "--exp", exp, *TINY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = (exp / "RESULTS.md").read_text()
    assert "### vocals" in results and "| unet |" in results and "| unet_nocurriculum |" in results
    assert "| mixture |" in results
    logs = exp / "unet" / "logs"
    for step in ("0_prep", "1_remix_s1", "2_train_s1", "3_train_s2", "4_train_s3", "5_train_control",
                 "6_separate_s3", "7_score_s3", "8_summary"):
        log = (logs / f"{step}.log").read_text()
        assert "# command:" in log and "# exit code: 0" in log and "# duration:" in log, step
    s2 = json.loads((exp / "unet" / "s2" / "config.json").read_text())
    assert s2["init"].endswith("s1/best.pt") and s2["stage"] == 2
    control = json.loads((exp / "unet" / "control" / "config.json").read_text())
    s3 = json.loads((exp / "unet" / "s3" / "config.json").read_text())
    assert control["epochs"] * control["steps_per_epoch"] == 3 * s3["epochs"] * s3["steps_per_epoch"]
    assert control["init"] is None and control["stage"] == 3
    assert (exp / "unet" / "s3" / "command.txt").read_text().count("--init") == 1
    weights = exp / "unet" / "s3" / "last.pt"
    mtime = weights.stat().st_mtime_ns

    again = run_recipe("run.sh", "--arch", "unet", "--exp", exp, *TINY, "--stop-stage", "6", "--control", "false",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in (logs / "0_prep.log").read_text()
    assert "nothing to do" in (logs / "4_train_s3.log").read_text()
    assert "already separated" in (logs / "6_separate_s3.log").read_text()
    assert weights.stat().st_mtime_ns == mtime

    staged = run_recipe("run_all.sh", "--archs", "unet", "--exp", exp, *TINY, "--stage", "8", cwd=tmp_path)
    assert staged.returncode == 0 and "8_summary" in staged.stderr and "0_prep" not in staged.stderr


def test_recipe_rejects_unknown_option_and_names_failing_stage(tmp_path):
    bad = run_recipe("run_all.sh", "--no-such-option", "1", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
    missing = run_recipe("run.sh", "--arch", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no config" in missing.stderr
    failing = run_recipe("run.sh", "--exp", tmp_path / "e", "--musdb", tmp_path / "missing", *TINY, cwd=tmp_path)
    assert failing.returncode == 2
    assert "FAILED" in failing.stderr and "0_prep.log" in failing.stderr


@pytest.mark.parametrize("conf", sorted((REPO / "recipes" / "conf").glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_config_is_accepted_by_mss_train(conf):
    from click.testing import CliRunner

    from mss_tools.cli.main import main

    result = CliRunner().invoke(main, ["train", "--config", str(conf), "--print-config", "unused.h5"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["arch"] == json.loads(conf.read_text())["arch"] == conf.stem
