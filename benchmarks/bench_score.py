"""BSSEval v4: mss_tools.metrics.bsseval side by side with museval.

Synthesizes a multitrack (harmonic "voice", drum hits, bass line, chords + band noise,
each stereo with a quiet independent broadband floor) and estimates with leakage from the
other sources, gain error and noise; scores it with museval's default v4 settings
(``museval.metrics.bss_eval`` with 1 s windows and hops, 512-tap time-invariant filters,
images mode) and with :func:`mss_tools.metrics.bsseval.bss_eval_v4`; prints wall times,
the speed ratio, peak memory and the largest per-frame differences of every metric.

    python benchmarks/bench_score.py                       # 240 s, 4 stereo sources, 44.1 kHz
    python benchmarks/bench_score.py --seconds 600 --skip-museval   # memory on a 10-min track
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import signal

from memory import reset_peak, rss_mib  # benchmarks/memory.py


def measure(fn):
    """Run ``fn()``; return its result, wall seconds, CPU seconds (all threads of this
    process) and peak RSS above the start (MiB)."""
    exact = reset_peak()
    before = rss_mib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = rss_mib("VmHWM") - before
    return result, seconds, cpu, (peak if exact else float("nan"))


# --------------------------------------------------------------------------------------
# synthesis


def _notes(rng, n, sr, lo_hz, hi_hz, min_s, max_s) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant pitch track and note-onset mask, both ``(n,)``."""
    f0 = np.empty(n)
    onsets = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(min_s, max_s) * sr)
        f0[pos:pos + length] = np.exp(rng.uniform(np.log(lo_hz), np.log(hi_hz)))
        onsets[pos] = 1.0
        pos += length
    return f0, onsets


def _harmonic(rng, f0: np.ndarray, onsets: np.ndarray, sr: int, n_harm: int, decay_s: float,
              rolloff: float, vibrato: float = 0.0) -> np.ndarray:
    """Sum of harmonics of ``f0`` with exponentially decaying note envelopes, ``(n,)``."""
    n = len(f0)
    t = np.arange(n) / sr
    freq = f0 * (1 + vibrato * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    two_cos = 2 * np.cos(phase)
    prev, cur = np.zeros(n), np.sin(phase)  # sin(k phase) = 2 cos(phase) sin((k-1) phase) - ...
    out = np.zeros(n)
    for k in range(1, n_harm + 1):
        out += rolloff ** (k - 1) * (k * freq < 0.45 * sr) * cur
        prev, cur = cur, two_cos * cur - prev
    envelope = signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (decay_s * sr))], onsets)
    return out * (0.3 + envelope)


def _band_noise(rng, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, min(hi, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n))


def synthesize(seconds: float, sr: int, n_src: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """References and estimates, float64 ``(sources, 2, time)``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    mono = []
    for j in range(n_src):
        kind = j % 4
        if kind == 0:  # voice: vibrato, many harmonics, breath noise
            f0, on = _notes(rng, n, sr, 150, 600, 0.3, 1.2)
            x = _harmonic(rng, f0, on, sr, 12, 0.4, 0.7, vibrato=0.01) + 0.05 * _band_noise(rng, n, sr, 2000, 10000)
        elif kind == 1:  # drums: decaying noise hits + a low resonant thump
            hits, kicks = np.zeros(n), np.zeros(n)
            hits[::sr // 4] = rng.uniform(0.3, 1.0, len(hits[::sr // 4]))
            kicks[::sr // 2] = 1.0
            env = signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (0.05 * sr))], hits)
            r, w = np.exp(-1.0 / (0.08 * sr)), 2 * np.pi * 60 / sr
            kick = signal.lfilter([1.0], [1.0, -2 * r * np.cos(w), r * r], kicks)
            x = env * _band_noise(rng, n, sr, 200, 16000) + 0.02 * kick
        elif kind == 2:  # bass
            f0, on = _notes(rng, n, sr, 40, 160, 0.25, 0.8)
            x = _harmonic(rng, f0, on, sr, 8, 0.3, 0.6)
        else:  # chords + band noise
            x = sum(_harmonic(rng, *_notes(rng, n, sr, 200, 1200, 0.8, 2.0), sr, 10, 1.0, 0.75)
                    for _ in range(3)) + 0.3 * _band_noise(rng, n, sr, 500, 8000)
        mono.append(x / np.sqrt(np.mean(x ** 2)))
    refs = np.empty((n_src, 2, n))
    for j, x in enumerate(mono):
        pan = rng.uniform(0.25, 0.75)
        delay = int(rng.integers(0, 20))
        refs[j, 0] = np.sqrt(1 - pan) * x
        refs[j, 1] = np.sqrt(pan) * np.concatenate([np.zeros(delay), x[:n - delay]])
        refs[j] += 0.01 * rng.standard_normal((2, n))  # broadband floor, -40 dB
    ests = np.empty_like(refs)
    for j in range(n_src):
        leak = np.zeros((2, n))
        for i in range(n_src):
            if i != j:
                fir = rng.normal(0, 0.1, 8) * np.exp(-np.arange(8) / 3)
                leak += signal.lfilter(fir, [1.0], refs[i], axis=-1)
        ests[j] = rng.uniform(0.8, 1.1) * refs[j] + leak + 0.05 * rng.standard_normal((2, n))
    return refs, ests


# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0, help="track length")
    parser.add_argument("--sr", type=int, default=44100, help="sample rate")
    parser.add_argument("--sources", type=int, default=4, help="number of stereo sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device for mss (default cpu)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of mss (the median is reported)")
    parser.add_argument("--skip-museval", action="store_true", help="only run mss (memory check)")
    parser.add_argument("--no-condition", dest="condition", action="store_false",
                        help="time bss_eval_v4 without the Gram condition estimate that `mss score` adds")
    args = parser.parse_args(argv)

    import torch
    from mss_tools.metrics.bsseval import METRICS, bss_eval_v4

    print(f"python {sys.version.split()[0]}  numpy {np.__version__}  torch {torch.__version__}  "
          f"cpus {os.cpu_count()}  load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    refs, ests = synthesize(args.seconds, args.sr, args.sources, args.seed)
    input_mib = (refs.nbytes + ests.nbytes) / 2 ** 20
    print(f"synthesized {args.sources} stereo sources x {args.seconds:g} s at {args.sr} Hz in "
          f"{time.perf_counter() - t0:.1f} s (references + estimates: {input_mib:.0f} MiB float64)")

    runs = [measure(lambda: bss_eval_v4(refs, ests, args.sr, device=args.device, condition=args.condition))
            for _ in range(args.repeat)]
    ours = runs[0][0]
    t_ours, cpu_ours = float(np.median([r[1] for r in runs])), float(np.median([r[2] for r in runs]))
    mem_ours = max(r[3] for r in runs)
    print(f"mss bss_eval_v4   : wall {t_ours:8.2f} s   cpu {cpu_ours:8.2f} s   "
          f"peak RSS +{mem_ours:6.0f} MiB   frames {ours['sdr'].shape[1]}"
          + (f"   (median of {args.repeat}: wall " + ", ".join(f"{r[1]:.2f}" for r in runs) + " s)"
             if args.repeat > 1 else ""))
    if args.condition:
        print("Gram condition (max of joint and own, per source): "
              + ", ".join(f"{c:.3g}" for c in ours["condition"]))
    if args.skip_museval:
        return 0

    import museval

    def run_museval():
        ref_t, est_t = np.swapaxes(refs, 1, 2), np.swapaxes(ests, 1, 2)
        sdr, isr, sir, sar, _ = museval.metrics.bss_eval(
            ref_t, est_t, window=args.sr, hop=args.sr, compute_permutation=False, filters_len=512,
            framewise_filters=False, bsseval_sources_version=False)
        return dict(zip(METRICS, (sdr, isr, sir, sar)))

    theirs, t_museval, cpu_museval, mem_museval = measure(run_museval)
    print(f"museval bss_eval  : wall {t_museval:8.2f} s   cpu {cpu_museval:8.2f} s   "
          f"peak RSS +{mem_museval:6.0f} MiB")
    print(f"speed-up (museval / mss): wall {t_museval / t_ours:.1f}x   cpu {cpu_museval / cpu_ours:.1f}x")
    for name in METRICS:
        a, b = ours[name], theirs[name]
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        diff = np.abs(a - b)[np.isfinite(a) & np.isfinite(b)]
        print(f"  {name}: max |mss - museval| = {diff.max() if diff.size else 0:.3e} dB   "
              f"median {np.median(diff) if diff.size else 0:.1e} dB   NaN frames identical: {same_nan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
