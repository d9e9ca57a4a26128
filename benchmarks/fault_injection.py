"""Fault injection: kill -9, concurrent writers, a full disk and read-only outputs, against the real
``mss`` commands. Prints, per fault, how many trials ended with no loss.

    python benchmarks/fault_injection.py                  # everything (root needed for the tmpfs parts)
    python benchmarks/fault_injection.py --kills 20 --seed 3
    python benchmarks/fault_injection.py --only kill,concurrent

- kill: each of prep, train, separate and score is started, killed with SIGKILL after a
  seeded random delay within 80 % of its uninterrupted run time, and run again with the same
  command. A kill is survived when the rerun exits 0, leaves no temporary file, and its
  result equals the uninterrupted run's: every cache dataset bit for bit, the trained
  weights bit for bit, every separated file's samples bit for bit, every score.
- concurrent: two ``mss prep`` of one output, the second started 0.2-0.4 s after the first;
  survived when neither corrupts the cache (it equals the serial one) and each exits 0, or
  2 with one line.
- nospace: ``mss prep`` into tmpfs mounts too small for the cache; survived when it exits 1
  with one line, leaves no cache, and after the mount is grown the rerun equals the
  reference.
- readonly: every tool writing into a read-only mount; survived when it exits 1 with one
  line naming the output and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
MSS = [sys.executable, "-m", "mss_tools"]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(MSS + [str(a) for a in args], capture_output=True, text=True, env=ENV, **kwargs)


def timed(args) -> float:
    started = time.perf_counter()
    result = run(args)
    if result.returncode != 0:
        raise SystemExit(f"reference run failed: mss {' '.join(map(str, args))}\n{result.stderr}")
    return time.perf_counter() - started


def kill_after(args, delay: float) -> bool:
    """Start ``mss args``, SIGKILL it after ``delay`` s; False if it finished first."""
    process = subprocess.Popen(MSS + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=ENV, start_new_session=True)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the tool and any worker it started
        process.wait()
        return True


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def cache_content(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: str(v) for k, v in f.attrs.items() if k != "created_by"}
        for split in f:
            for track in f[split]:
                group = f[f"{split}/{track}"]
                out[f"{split}/{track}"] = {k: str(v) for k, v in group.attrs.items()}
                for name, dataset in group.items():
                    out[f"{split}/{track}/{name}"] = dataset[()].tobytes()
    return out


def weights(path: Path) -> dict:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy().tobytes() for k, v in payload["state_dict"].items()}


def folder_audio(folder: Path) -> dict:
    """Every separated file's samples (bit for bit), rate and sample format. Not the bytes: libsndfile
    stamps float WAVs with the time they were written (PEAK chunk)."""
    import soundfile as sf

    out = {}
    for path in sorted(folder.rglob("*.wav")):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        out[str(path.relative_to(folder))] = (data.tobytes(), rate, sf.info(path).subtype)
    return out


def score_content(path: Path) -> dict:
    document = json.loads(path.read_text())
    return {"tracks": document["tracks"], "aggregate": document["aggregate"]}


class Study:
    """The commands of one small study and its uninterrupted results."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "ref" / "cache.h5"
        self.prep = ["prep", "--sr", "16000", "--demo-tracks", "10", "--demo-duration", "4", "demo"]
        self.train = ["train", "--arch", "unet", "--arch-opt", "depth=3", "--arch-opt", "channels=8", "--epochs", "2",
                      "--steps-per-epoch", "6", "--batch-size", "4", "--segment", "1", "--checkpoint-every", "1",
                      "--valid-seconds", "2", "--seed", "1"]

    def separate(self, checkpoint: Path, output: Path) -> list:
        return ["separate", checkpoint, self.cache, "--split", "test", "-o", output]

    def score(self, predictions: Path, output: Path) -> list:
        return ["score", predictions, "--museval", "-o", output]

    def reference(self) -> dict:
        ref = self.root / "ref"
        seconds = {"prep": timed(self.prep + [self.cache])}
        seconds["train"] = timed(self.train + [self.cache, "-o", ref / "exp"])
        seconds["separate"] = timed(self.separate(ref / "exp" / "best.pt", ref / "preds"))
        seconds["score"] = timed(self.score(ref / "preds", ref / "scores.json"))
        self.expected = {"prep": cache_content(self.cache), "train": weights(ref / "exp" / "last.pt"),
                         "separate": folder_audio(ref / "preds"),
                         "score": score_content(ref / "scores.json")}
        return seconds


def kill_trials(study: Study, tool: str, kills: int, seconds: float, rng: random.Random) -> tuple[int, int, list]:
    survived, tried, problems = 0, 0, []
    ref = study.root / "ref"
    for trial in range(kills):
        work = study.root / f"kill-{tool}-{trial}"
        work.mkdir()
        if tool == "prep":
            args, result_of = study.prep + [work / "cache.h5"], lambda: cache_content(work / "cache.h5")
        elif tool == "train":
            args, result_of = study.train + [study.cache, "-o", work / "exp"], lambda: weights(work / "exp" / "last.pt")
        elif tool == "separate":
            args = study.separate(ref / "exp" / "best.pt", work / "preds")
            result_of = lambda: folder_audio(work / "preds")  # noqa: E731
        else:
            predictions = work / "preds"
            shutil.copytree(ref / "preds", predictions)
            args, result_of = study.score(predictions, work / "scores.json"), lambda: score_content(work / "scores.json")
        if not kill_after(args, rng.uniform(0.3, 0.8 * seconds)):  # the reference ran cold: reruns are faster
            shutil.rmtree(work)
            continue
        tried += 1
        rerun = run(args)
        problem = None
        if rerun.returncode != 0:
            problem = f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}"
        elif temporaries(work):
            problem = f"left {[str(p) for p in temporaries(work)]}"
        elif result_of() != study.expected[tool]:
            problem = "result differs from the uninterrupted run"
        if problem:
            problems.append(f"{tool} trial {trial}: {problem}")
        else:
            survived += 1
        shutil.rmtree(work)
    return survived, tried, problems


def concurrent_trials(study: Study, trials: int, rng: random.Random) -> tuple[int, int, list]:
    survived, problems = 0, []
    for trial in range(trials):
        work = study.root / f"concurrent-{trial}"
        work.mkdir()
        args = MSS + [str(a) for a in study.prep + [work / "cache.h5"]]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        time.sleep(rng.uniform(0.2, 0.4))
        second = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        outcomes = [(p.wait(), p.stderr.read()) for p in (first, second)]
        codes = sorted(code for code, _ in outcomes)
        refused = [err for code, err in outcomes if code == 2]
        ok = codes in ([0, 0], [0, 2]) and all(len([x for x in e.splitlines() if "error" in x]) == 1 for e in refused)
        ok = ok and (work / "cache.h5").exists() and cache_content(work / "cache.h5") == study.expected["prep"]
        if ok:
            survived += 1
        else:
            problems.append(f"concurrent trial {trial}: exit codes {codes}")
        shutil.rmtree(work)
    return survived, trials, problems


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def nospace_trials(study: Study, sizes: list[str]) -> tuple[int, int, list]:
    survived, problems = 0, []
    for size in sizes:
        mount = study.root / f"nospace-{size}"
        if not mount_tmpfs(mount, size):
            return 0, 0, ["cannot mount a tmpfs here (needs root)"]
        try:
            output = mount / "cache.h5"
            first = run(study.prep + [output])
            lines = [x for x in first.stderr.splitlines() if "error" in x]
            ok = (first.returncode == 1 and len(lines) == 1 and "No space left" in lines[0]
                  and "Traceback" not in first.stderr and not output.exists())
            subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
            rerun = run(study.prep + [output])
            ok = ok and rerun.returncode == 0 and not temporaries(mount)
            ok = ok and cache_content(output) == study.expected["prep"]
            if ok:
                survived += 1
            else:
                problems.append(f"nospace {size}: exit {first.returncode}, then {rerun.returncode}: "
                                f"{lines[:1] or first.stderr[-300:]}")
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return survived, len(sizes), problems


def readonly_trials(study: Study) -> tuple[int, int, list]:
    mount = study.root / "readonly"
    if not mount_tmpfs(mount, "4m", read_only=True):
        return 0, 0, ["cannot mount a tmpfs here (needs root)"]
    ref = study.root / "ref"
    cases = {
        "prep": study.prep + [mount / "cache.h5"],
        "remix": ["remix", study.cache, mount / "plan.h5", "--examples", "4", "--segment", "1"],
        "train": study.train + [study.cache, "-o", mount / "exp"],
        "separate": study.separate(ref / "exp" / "best.pt", mount / "preds"),
        "score": study.score(ref / "preds", mount / "scores.json"),
        "compare": ["compare", ref / "scores.json", "-o", mount / "report"],
    }
    survived, problems = 0, []
    try:
        for tool, args in cases.items():
            result = run(args)
            lines = [x for x in result.stderr.splitlines() if "error" in x]
            if (result.returncode == 1 and len(lines) == 1 and "Read-only file system" in lines[0]
                    and str(mount) in lines[0] and "Traceback" not in result.stderr):
                survived += 1
            else:
                problems.append(f"readonly {tool}: exit {result.returncode}: {result.stderr.strip()[-300:]}")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return survived, len(cases), problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kill -9 trials per tool")
    parser.add_argument("--concurrent", type=int, default=9, help="concurrent-writer trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="kill,concurrent,nospace,readonly")
    parser.add_argument("--tools", default="prep,train,separate,score", help="the tools the kill trials kill")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="mss-faults-") as tmp:
        study = Study(Path(tmp))
        seconds = study.reference()
        print("uninterrupted runs: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        rows, problems = [], []
        if "kill" in wanted:
            for tool in args.tools.split(","):
                survived, tried, found = kill_trials(study, tool, args.kills, seconds[tool], rng)
                rows.append((f"kill -9 {tool}", survived, tried))
                problems += found
        if "concurrent" in wanted:
            survived, tried, found = concurrent_trials(study, args.concurrent, rng)
            rows.append(("concurrent prep writers", survived, tried))
            problems += found
        if "nospace" in wanted:
            survived, tried, found = nospace_trials(study, ["1m", "2m", "3m", "4m"])
            rows.append(("no space (tmpfs), then rerun", survived, tried))
            problems += found
        if "readonly" in wanted:
            survived, tried, found = readonly_trials(study)
            rows.append(("read-only output, every tool", survived, tried))
            problems += found
    print(f"\n{'fault':<32} {'no loss':>8} {'tried':>6}")
    for name, survived, tried in rows:
        print(f"{name:<32} {survived:>8} {tried:>6}")
    print(f"\nlosses: {sum(t - s for _, s, t in rows)}")
    for problem in problems:
        print("  " + problem)
    sys.exit(1 if any(s != t for _, s, t in rows) or problems else 0)


if __name__ == "__main__":
    main()
