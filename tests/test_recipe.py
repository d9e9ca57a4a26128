"""The Kaldi-style recipes end to end on a tiny demo corpus: run, rerun (everything skipped), run from a stage."""

import json
import os
import subprocess
import sys

import pytest

from mss_tools.cache import read_plan
from tests.conftest import REPO

TINY = ["--preset", "tiny", "--demo-tracks", "6", "--demo-test-tracks", "1", "--demo-duration", "3", "--jobs", "1",
        "--seeds", "1",
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
    assert "### drums" in results and "### no_drums" in results
    assert "| unet |" in results and "| unet_nocurriculum |" in results
    assert "| mixture |" in results and "| silence |" in results and "silence/drums (estimates 100 dB below" in results
    assert "Every trained model used the same loss, l1_magnitude" in results
    logs = exp / "unet" / "logs"
    assert "# exit code: 0" in (exp / "mixture" / "logs" / "0_prep.log").read_text()  # prepped once, first
    assert not (logs / "0_prep.log").exists()
    for step in ("1_remix_s1", "2_train_s1", "3_train_s2", "4_train_s3", "5_train_control",
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
    assert all("up to date" in (logs / f"1_remix_s{s}.log").read_text() for s in (1, 2, 3))
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


STUB = '''import json, os, sys
log, args = sys.argv[1], sys.argv[2:]
with open(log, "a") as handle:
    handle.write(" ".join(args) + "\\n")
if args[0] == "train" and "--print-config" in args:
    print(json.dumps({"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "segment": 1.5}))
if args[0] == "compare":
    out = args[args.index("-o") + 1]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "RESULTS.md"), "w").write("results\\n")
'''


def _stub_mss(tmp_path):
    """An `mss` that only records its command lines (one per call, in the returned file)."""
    (tmp_path / "stub.py").write_text(STUB)
    return f"python3 {tmp_path / 'stub.py'} {tmp_path / 'calls.txt'}", tmp_path / "calls.txt"


def test_run_all_forwards_options_and_runs_each_baseline_once(tmp_path):
    mss, calls = _stub_mss(tmp_path)
    result = run_recipe("run_all.sh", "--archs", "unet unet_lite", "--exp", tmp_path / "exp", "--preset", "tiny",
                        "--jobs", "1", "--museval", "false", "--device", "cpu", "--seeds", "1", "--train-jobs", "1",
                        "--mss", mss, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = calls.read_text().splitlines()
    assert [line for line in lines if line.startswith("separate mixture")] == \
        [f"separate mixture {tmp_path}/exp/data/cache_8000.h5 --split test --two-stems drums "
         f"-o {tmp_path}/exp/mixture/preds/mixture"]
    assert sum(line.startswith("score") and "mixture" in line for line in lines) == 1
    assert [line for line in lines if line.startswith("separate silence")] == \
        [f"separate silence {tmp_path}/exp/data/cache_8000.h5 --split test --two-stems drums "
         f"-o {tmp_path}/exp/silence/preds/silence"]
    assert sum(line.startswith("score") and "silence" in line for line in lines) == 1
    assert sum(line.startswith("prep") for line in lines) == 2 and all(
        " -j 1 " in line for line in lines if line.startswith(("prep", "score")))
    assert not any("--museval" in line for line in lines)
    for arch in ("unet", "unet_lite"):
        remixes = [line for line in lines if line.startswith(f"remix {tmp_path}/exp/data/cache_8000.h5 "
                                                             f"{tmp_path}/exp/{arch}/plans/")]
        assert len(remixes) == 3 and all("--segment 1.5 --examples 24" in line for line in remixes)
        trains = [line for line in lines if line.startswith("train") and f"/exp/{arch}/" in line]
        assert [("--epochs 2" in t, "--epochs 6" in t, "--device cpu" in t) for t in trains] == \
            [(True, False, True)] * 3 + [(False, True, True)]
        assert sum(line.startswith("separate") and f"/exp/{arch}/" in line for line in lines) == 2
    stages = [line.split("Stage ")[1].split(":")[0] for line in result.stderr.splitlines() if "] Stage " in line]
    assert stages == ["0", "6", "7"] * 2 + ["1", "2", "3", "4", "5", "6", "7", "8"] * 2 + ["9"]


def test_one_loss_for_every_architecture_is_a_recipe_option(tmp_path):
    mss, calls = _stub_mss(tmp_path)
    result = run_recipe("run_all.sh", "--archs", "unet bsrnn", "--exp", tmp_path / "exp", "--preset", "tiny",
                        "--jobs", "1", "--loss", "l1_wave", "--seeds", "1", "--mss", mss, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trains = [line for line in calls.read_text().splitlines() if line.startswith("train")]
    assert len(trains) == 2 * 5 and all("--loss l1_wave" in line for line in trains)  # print-config + 4 trainings


def test_seeds_train_score_and_compare_each_seed(tmp_path):
    mss, calls = _stub_mss(tmp_path)
    result = run_recipe("run_all.sh", "--archs", "unet", "--exp", tmp_path / "exp", "--preset", "tiny", "--jobs", "1",
                        "--seeds", "2", "--mss", mss, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = calls.read_text().splitlines()
    trains = [line for line in lines if line.startswith("train") and " -o " in line]
    for k in (1, 2):
        mine = [line for line in trains if f"/exp/unet/seed{k}/" in line.split(" -o ")[1]]
        assert len(mine) == 4 and all(f"--seed {k}" in line for line in mine)
        assert any(f"--plan {tmp_path}/exp/unet/plans/seed{k}/s1.h5" in line for line in mine)
    remixes = [line for line in lines if line.startswith("remix")]
    assert sorted(int(line.split("--seed ")[1]) for line in remixes) == [1, 2, 3, 101, 102, 103]
    scores = [line.split(" -o ")[1] for line in lines if line.startswith("score")]
    assert sorted(s.rsplit("/", 1)[1] for s in scores) == sorted([
        "mixture.json", "silence.json", "unet.seed1.json", "unet.seed2.json", "unet_nocurriculum.seed1.json",
        "unet_nocurriculum.seed2.json"])
    summary = next(line for line in lines if line.startswith("compare") and "/exp/unet/summary" in line)
    assert all(f"/exp/scores/{name}.json" in summary for name in ("unet.seed1", "unet.seed2", "unet_nocurriculum.seed2"))


def test_command_txt_gets_one_line_per_call(tmp_path):
    mss, _ = _stub_mss(tmp_path)
    exp = tmp_path / "exp"
    first = run_recipe("run.sh", "--arch", "unet", "--exp", exp, "--preset", "tiny", "--mss", mss, cwd=tmp_path)
    again = run_recipe("run.sh", "--arch", "unet", "--exp", exp, "--preset", "tiny", "--mss", mss, "--stage", "8",
                       cwd=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, again.stderr[-3000:]
    lines = (exp / "unet" / "command.txt").read_text().splitlines()
    assert len(lines) == 2 and all("conf " in line and "tiny/unet.json" in line for line in lines)
    import shlex

    assert shlex.split(lines[0], comments=True)[1:] == ["--arch", "unet", "--exp", str(exp), "--preset", "tiny",
                                                        "--mss", mss]
    assert shlex.split(lines[1], comments=True)[-2:] == ["--stage", "8"]


def test_run_all_help_explains_every_option():
    result = run_recipe("run_all.sh", "--help", cwd=REPO)
    assert result.returncode == 0
    options = [line for line in result.stdout.splitlines() if line.startswith("  --")]
    assert {line.split()[0] for line in options} >= {"--archs", "--arch", "--preset", "--exp", "--stage", "--mss"}
    assert all(len(line.split()) >= 3 for line in options if not line.startswith(("  --musdb", "  --sample-rate")))
    assert "the built-in synthetic demo corpus" in next(line for line in options if line.startswith("  --musdb"))


def test_a_plan_is_drawn_again_when_its_segment_changes(demo_cache, tmp_path):
    """The recipe draws plans with `mss remix` at every run (test_run_all_then_rerun_then_stage sees it
    report "up to date"); remix keeps a plan only when it would draw it again identically."""
    from click.testing import CliRunner

    from mss_tools.cli.main import main

    def remix(*options):
        result = CliRunner().invoke(main, ["remix", str(demo_cache), str(tmp_path / "s1.h5"), "--stage", "1",
                                           "--examples", "4", *options])
        assert result.exit_code == 0, result.output
        return "up to date" in result.output, read_plan(tmp_path / "s1.h5")[2]["segment_frames"]

    assert remix("--segment", "1") == (False, 8000)
    assert remix("--segment", "1") == (True, 8000)
    assert remix("--segment", "0.5") == (False, 4000)
