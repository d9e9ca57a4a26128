"""``mss separate`` end to end side by side with the bare model forward passes it makes.

Overhead (default): synthesizes a stereo track (180 s at 44.1 kHz), builds a model (the
``unet`` default preset at 44.1 kHz, random weights) and times, in one process with a fixed
thread count, (a) the model's forward passes alone over exactly the chunks and batches
that separation runs, prepared beforehand, and (b) :func:`mss_tools.separate.separate` from
the WAV file to the stem files. It prints both, their ratio, and — robust to a busy machine
— the share of (b) spent inside the model itself.

Memory (``--memory``): synthesizes a long file (20 min stereo 44.1 kHz float32, written in
blocks) and separates it with a tiny U-Net, printing the peak resident memory above what
the process held before (VmHWM, reset through /proc/self/clear_refs) next to the size of
the decoded track.

    python benchmarks/bench_separate.py                            # overhead, 180 s, unet default
    python benchmarks/bench_separate.py --arch bsrnn --preset small --seconds 60
    python benchmarks/bench_separate.py --memory --seconds 1200    # peak RSS on a 20-min file
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from memory import reset_peak, rss_mib  # benchmarks/memory.py

SOURCES = ["vocals", "drums", "bass", "other"]


def synthesize(path: Path, seconds: float, rate: int, block_seconds: float = 30.0) -> None:
    """A stereo test track (a chord, a bass line, noise bursts), written in blocks as float32 WAV."""
    rng = np.random.default_rng(0)
    total = int(seconds * rate)
    with sf.SoundFile(str(path), "w", rate, 2, "FLOAT") as out:
        for start in range(0, total, int(block_seconds * rate)):
            t = np.arange(start, min(total, start + int(block_seconds * rate))) / rate
            chord = sum(0.08 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
            bass = 0.2 * np.sin(2 * np.pi * 55 * t * (1 + 0.01 * np.sin(2 * np.pi * 0.5 * t)))
            hits = 0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.9)
            left, right = chord + bass + hits, 0.8 * chord + bass - hits
            out.write(np.stack([left, right], axis=1).astype(np.float32))


def build(arch: str, preset: str | None, overrides: dict, rate: int, path: Path):
    from mss_tools.checkpoint import load_model, model_payload, save_checkpoint
    from mss_tools.models import build_model

    torch.manual_seed(0)
    save_checkpoint(path, model_payload(build_model(arch, SOURCES, 2, rate, preset=preset, overrides=overrides)))
    return load_model(path)


def bare_forward(model, path: Path, segment: float, overlap: float, batch_size: int) -> tuple[float, int]:
    """Seconds in ``model(batch)`` over the chunks and batches separation runs; and the number of chunks."""
    from mss_tools.apply import chunk_length, chunk_starts, frame_hop

    mix = torch.from_numpy(np.ascontiguousarray(sf.read(str(path), dtype="float32", always_2d=True)[0].T))
    chunk = chunk_length(int(round(segment * model.sample_rate)), mix.shape[-1], frame_hop(model))
    starts = chunk_starts(mix.shape[-1], chunk, overlap, frame_hop(model))
    batches = [torch.stack([mix[:, s:s + chunk] for s in starts[i:i + batch_size]])
               for i in range(0, len(starts), batch_size)]
    elapsed = 0.0
    with torch.no_grad():
        model(batches[0])  # warm-up, untimed: separation runs after this and is warm too
        for batch in batches:
            begin = time.perf_counter()
            model(batch)
            elapsed += time.perf_counter() - begin
    return elapsed, len(starts)


class ForwardTimer:
    """Wraps a model class's ``forward`` to add up the time spent in it."""

    def __init__(self, cls):
        self.cls, self.seconds, self.calls = cls, 0.0, 0

    def __enter__(self):
        original = self.original = self.cls.forward

        def timed(module, *args, **kwargs):
            begin = time.perf_counter()
            try:
                return original(module, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - begin
                self.calls += 1

        self.cls.forward = timed
        return self

    def __exit__(self, *exc):
        self.cls.forward = self.original


def overhead(args, folder: Path) -> None:
    from mss_tools.separate import separate

    wav = folder / "track.wav"
    begin = time.perf_counter()
    synthesize(wav, args.seconds, args.sr)
    print(f"synthesized {args.seconds:g} s stereo at {args.sr} Hz in {time.perf_counter() - begin:.1f} s")
    model = build(args.arch, args.preset, {}, args.sr, folder / "model.pt")
    print(f"model: {args.arch} preset {args.preset or 'default'}, {model.num_parameters / 1e6:.2f} M parameters, "
          f"segment {args.segment} s, overlap {args.overlap}, batch {args.batch_size}")
    bare, e2e, inside = [], [], []
    for repeat in range(args.repeats):
        seconds, chunks = bare_forward(model, wav, args.segment, args.overlap, args.batch_size)
        bare.append(seconds)
        with ForwardTimer(type(model)) as timer:
            begin = time.perf_counter()
            failed = separate(str(folder / "model.pt"), [str(wav)], folder / f"out{repeat}", segment=args.segment,
                              overlap=args.overlap, batch_size=args.batch_size, device="cpu")
            e2e.append(time.perf_counter() - begin)
        assert failed == 0
        inside.append(timer.seconds)
        print(f"  run {repeat + 1}: (a) bare forward {bare[-1]:7.2f} s ({chunks} chunks)   "
              f"(b) end to end {e2e[-1]:7.2f} s, of which in the model {inside[-1]:7.2f} s")
    a, b = min(bare), min(e2e)
    realtime = args.seconds / b
    print(f"(a) bare forward passes : {a:8.2f} s")
    print(f"(b) mss separate        : {b:8.2f} s   ({realtime:.2f}x real time)")
    print(f"overhead ratio (b)/(a)  : {b / a:.3f}   (goal <= 1.10)")
    print(f"within (b), total / time in model forward: {min(e / i for e, i in zip(e2e, inside)):.3f}")


def memory(args, folder: Path) -> None:
    from mss_tools.separate import separate

    wav = folder / "long.wav"
    begin = time.perf_counter()
    synthesize(wav, args.seconds, args.sr)
    decoded = args.seconds * args.sr * 2 * 4 / 2 ** 20
    print(f"synthesized {args.seconds:g} s stereo at {args.sr} Hz ({wav.stat().st_size / 2 ** 20:.0f} MiB float32 "
          f"WAV, decoded {decoded:.0f} MiB) in {time.perf_counter() - begin:.1f} s")
    model = build("unet", None, {"depth": 2, "channels": 4}, args.sr, folder / "tiny.pt")
    batch = torch.zeros(args.batch_size, 2, int(args.segment * args.sr))
    reset_peak()
    before = rss_mib("VmRSS")
    with torch.no_grad():
        model(batch)
    forward_peak = rss_mib("VmHWM") - before
    del model, batch
    exact = reset_peak()
    before = rss_mib("VmRSS")
    begin = time.perf_counter()
    failed = separate(str(folder / "tiny.pt"), [str(wav)], folder / "out", segment=args.segment,
                      overlap=args.overlap, batch_size=args.batch_size, device="cpu")
    seconds = time.perf_counter() - begin
    assert failed == 0
    peak = rss_mib("VmHWM")
    written = sum(p.stat().st_size for p in (folder / "out").rglob("*.wav")) / 2 ** 20
    print(f"separated in {seconds:.1f} s, wrote {written:.0f} MiB of stems")
    print(f"RSS before separate(): {before:.0f} MiB (torch and its libraries, the model)")
    print(f"peak RSS during      : {peak:.0f} MiB" + ("" if exact else " (peak mark not resettable: since start)"))
    print(f"peak above before    : {peak - before:.0f} MiB   (decoded track: {decoded:.0f} MiB, "
          f"whole-track float32 stems: {4 * decoded:.0f} MiB)")
    print(f"for scale, one bare forward pass of a {args.batch_size} x {args.segment:g} s batch: "
          f"peak +{forward_peak:.0f} MiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--memory", action="store_true", help="measure peak RSS on a long file instead")
    parser.add_argument("--seconds", type=float, default=None, help="track length (default: 180; 1200 with --memory)")
    parser.add_argument("--sr", type=int, default=44100)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--preset", default=None, help="model preset (default: the architecture's defaults)")
    parser.add_argument("--segment", type=float, default=6.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where to put the audio (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (1200.0 if args.memory else 180.0)
    torch.set_num_threads(args.threads)
    print(f"python {sys.version.split()[0]}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        (memory if args.memory else overhead)(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
