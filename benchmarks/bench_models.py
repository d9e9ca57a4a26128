"""Size and speed of every architecture at its paper-size and small preset.

For each (architecture, preset): parameter count, forward and forward+backward seconds per
second of stereo audio, and peak memory (CUDA: max allocated; CPU: peak RSS of a fresh
subprocess, which includes the ~0.4 GB of the Python/torch runtime — compare across rows).

    python benchmarks/bench_models.py                     # every architecture, CPU, 44.1 kHz, 3 s batch 1
    python benchmarks/bench_models.py --archs bsrnn,bsrnn_se --presets paper --device cuda
    python benchmarks/bench_models.py --conf lite --sample-rate 22050   # the recipes' lite confs:
        # their preset, --arch-opt, batch size, segment and activation checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from mss_tools.models import ARCHITECTURES

SOURCES = ["vocals", "drums", "bass", "other"]
# architectures whose papers train one model per target: their paper preset is measured on one (vocals)
ONE_TARGET_PAPERS = ("bsrnn", "bsrnn_se", "bs_roformer", "mel_roformer")


def measure(arch: str, preset: str, seconds: float, sample_rate: int, batch: int, device: str, repeats: int,
            sources: list[str], activation_checkpointing: bool = False, overrides: dict | None = None) -> dict:
    from mss_tools.losses import get_loss
    from mss_tools.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, sources, 2, sample_rate, preset=preset, overrides=overrides).to(device)
    model.activation_checkpointing = activation_checkpointing
    loss_fn = get_loss(model.DEFAULT_LOSS)
    x = torch.randn(batch, 2, int(seconds * sample_rate), device=device)
    y = torch.randn(batch, len(sources), 2, x.shape[-1], device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            model(x)
        sync()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y, model).backward()
        sync()

    timings = {}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        samples.sort()
        timings[name] = samples[len(samples) // 2] / (seconds * batch)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"arch": arch, "preset": preset, "params": model.num_parameters, "peak_mb": round(peak, 1),
            "fwd_s_per_s": timings["forward"], "fwd_bwd_s_per_s": timings["forward_backward"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated; default: every architecture")
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per example")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="train-mode passes recompute block activations (as `mss train --activation-checkpointing`)")
    parser.add_argument("--conf", help="a folder of recipes/conf (demo, lite, paper): measure each arch as configured "
                                       "there instead of --presets/--batch/--seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--arch-opts", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--sources", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        arch, preset = args.one.split(":")
        sources = ["vocals"] if arch in ONE_TARGET_PAPERS and preset == "paper" else SOURCES
        sources = args.sources.split(",") if args.sources else sources
        print(json.dumps(measure(arch, preset, args.seconds, args.sample_rate, args.batch, args.device,
                                 args.repeats, sources, args.activation_checkpointing, json.loads(args.arch_opts))))
        return
    if args.conf:
        measure_confs(args)
        return
    print(f"{args.device}, {args.threads} threads, {args.sample_rate} Hz, batch {args.batch} x {args.seconds:g} s "
          f"stereo; seconds of compute per second of audio (median of {args.repeats})")
    print(f"{', '.join(ONE_TARGET_PAPERS)} at the paper preset are one-target (vocals) models as in their papers; "
          "the others separate 4 stems"
          + ("; activation checkpointing on" if args.activation_checkpointing else ""))
    print(f"{'arch':12s} {'preset':6s} {'params':>12s} {'fwd s/s':>9s} {'f+b s/s':>9s} {'peak MB':>9s}")
    for arch in args.archs.split(","):
        for preset in args.presets.split(","):
            row = measure_in_subprocess(args, arch, preset, args.batch, args.seconds, args.activation_checkpointing)
            if row is not None:
                print(f"{arch:12s} {preset:6s} {row['params']:12,d} {row['fwd_s_per_s']:9.3f} "
                      f"{row['fwd_bwd_s_per_s']:9.3f} {row['peak_mb']:9.0f}", flush=True)


def measure_in_subprocess(args, arch: str, preset: str, batch: int, seconds: float, checkpointing: bool,
                          options: dict | None = None, sources: list[str] | None = None) -> dict | None:
    """:func:`measure` in a fresh process (so that its peak RSS is this model's); ``None`` (and the
    error printed) if it fails."""
    command = [sys.executable, __file__, "--one", f"{arch}:{preset}", "--seconds", str(seconds),
               "--sample-rate", str(args.sample_rate), "--batch", str(batch), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--device", args.device, "--arch-opts", json.dumps(options or {}),
               "--sources", ",".join(sources or [])]
    command += ["--activation-checkpointing"] if checkpointing else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{arch:12s} {preset:6s} failed: {result.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_confs(args) -> None:
    """One row per architecture as ``recipes/conf/<args.conf>/<arch>.json`` trains it (4 stems)."""
    folder = Path(__file__).resolve().parent.parent / "recipes" / "conf" / args.conf
    print(f"{args.device}, {args.threads} threads, {args.sample_rate} Hz, recipes/conf/{args.conf}: each conf's batch, "
          f"segment, options; seconds of compute per second of audio (median of {args.repeats}); 4 stems")
    print(f"{'arch':12s} {'batch':>5s} {'seg s':>5s} {'ckpt':>4s} {'params':>12s} {'fwd s/s':>9s} {'f+b s/s':>9s} "
          f"{'peak MB':>9s}")
    for arch in args.archs.split(","):
        conf = json.loads((folder / f"{arch}.json").read_text())
        options = conf.get("arch-opt", {})
        if isinstance(options, list):
            options = dict(item.split("=", 1) for item in options)
        batch, seconds = int(conf.get("batch-size", args.batch)), float(conf.get("segment", args.seconds))
        checkpointing = bool(conf.get("activation-checkpointing", False))
        row = measure_in_subprocess(args, arch, conf.get("preset", "small"), batch, seconds, checkpointing, options,
                                    SOURCES)
        if row is not None:
            print(f"{arch:12s} {batch:5d} {seconds:5g} {'yes' if checkpointing else 'no':>4s} {row['params']:12,d} "
                  f"{row['fwd_s_per_s']:9.3f} {row['fwd_bwd_s_per_s']:9.3f} {row['peak_mb']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
