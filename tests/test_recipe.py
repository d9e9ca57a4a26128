"""recipes/run_all.sh end to end on a tiny demo corpus, then rerun (everything skipped), then from a stage."""

import subprocess
import sys

from tests.conftest import REPO

TINY = ["--demo-tracks", "6", "--demo-duration", "3", "--sample-rate", "8000", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "2", "--segment", "1", "--jobs", "1",
        "--mss", f"{sys.executable} -m mss_tools"]


def run_recipe(*args, cwd):
    return subprocess.run(["bash", str(REPO / "recipes" / "run_all.sh"), *args], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_run_all_then_rerun_then_stage(tmp_path):
    exp = tmp_path / "exp"
    first = run_recipe("--exp", str(exp), *TINY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    results = (exp / "report" / "RESULTS.md").read_text()
    assert "### vocals" in results and "| unet |" in results
    for step in ("0_prep", "1_train_unet", "2_separate_unet", "3_score_unet", "4_compare"):
        log = (exp / "logs" / f"{step}.log").read_text()
        assert "# command:" in log and "# exit code: 0" in log and "# duration:" in log
    assert (exp / "scores" / "unet.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (exp / "data" / "cache.h5", exp / "unet" / "last.pt",
                                                  exp / "scores" / "unet.json")}

    again = run_recipe("--exp", str(exp), *TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "up to date" in (exp / "logs" / "0_prep.log").read_text()
    assert "nothing to do" in (exp / "logs" / "1_train_unet.log").read_text()
    assert "already separated" in (exp / "logs" / "2_separate_unet.log").read_text()
    for path, mtime in mtimes.items():
        if path.suffix != ".json":
            assert path.stat().st_mtime_ns == mtime, path

    staged = run_recipe("--exp", str(exp), *TINY, "--stage", "4", cwd=tmp_path)
    assert staged.returncode == 0 and "stage 4: compare" in staged.stderr and "stage 0" not in staged.stderr


def test_recipe_rejects_unknown_option_and_names_failing_stage(tmp_path):
    bad = run_recipe("--no-such-option", "1", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
    failing = run_recipe("--exp", str(tmp_path / "e"), "--musdb", str(tmp_path / "missing"), *TINY, cwd=tmp_path)
    assert failing.returncode == 2
    assert "FAILED" in failing.stderr and "0_prep.log" in failing.stderr
