"""How far chunked overlap-add separation is from separating the whole track at once, per architecture.

Each registered architecture at a preset (default ``small``), random init (seeded), eval mode,
separates one synthetic stereo track (harmonic tones under a slow envelope plus noise bursts)
whole — one forward pass over the track — and in chunks with :func:`mss_tools.apply.separate_tensor`.
Printed: the SNR in dB of the chunked output against the whole-track output (all sources
together), with the chunks on the model's STFT frame grid (what ``mss separate`` does) at
overlaps 0.25 and 0.5, and with the chunk grid of before (chunk and hop not rounded to the
STFT hop) at overlap 0.25. A model local in time agrees to 60 dB and more; a model with
context over the whole input (BLSTM over time, attention, a normalisation over the input)
sees different context in a chunk and legitimately differs.

    python benchmarks/bench_chunking.py                          # 10 s at 16 kHz, each model's default segment
    python benchmarks/bench_chunking.py --sample-rate 8000 --segment 1.3 --archs bsrnn

With ``--checkpoints`` it measures trained models instead, on the first test tracks of a stem cache:
the chunked output at the model's own segment (overlap 0.25 and 0.5) and at twice and four times
that segment, against the whole-track output, as the median SNR over the tracks:

    python benchmarks/bench_chunking.py --cache exp/demo/data/cache_8000.h5 \
        --checkpoints exp/demo/unet/seed1/s3/best.pt,exp/demo/bsrnn/seed1/s3/best.pt
"""

from __future__ import annotations

import argparse
import math

import torch

SOURCES = ["vocals", "drums", "bass", "other"]


def synthetic_track(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A stereo test track ``(2, time)``: six harmonic tones under slow envelopes plus noise bursts, peak near 0.5."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    track = torch.zeros(2, t.numel())
    for _ in range(6):
        f0 = 80 + 600 * torch.rand(1, generator=generator).item()
        envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * (0.1 + 0.5 * torch.rand(1, generator=generator).item()) * t)
        tone = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 5) if k * f0 < sample_rate / 2)
        track += torch.rand(2, 1, generator=generator) * envelope * tone
    bursts = (torch.rand(int(seconds * 4) + 1, generator=generator) > 0.6).float()
    track += 0.3 * torch.randn(2, t.numel(), generator=generator) * bursts.repeat_interleave(sample_rate // 4)[: t.numel()]
    return 0.5 * track / track.abs().max()


class WithoutFrameHop:
    """``model`` as inference saw it before chunks were put on the STFT frame grid: no ``stft_hop``."""

    def __init__(self, model):
        self.model = model
        self.sources, self.sample_rate = model.sources, model.sample_rate
        self.audio_channels, self.segment = model.audio_channels, model.segment

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        return self.model(mix)


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return 10 * math.log10(reference.square().sum().item() / max((reference - estimate).square().sum().item(), 1e-30))


def measure(arch: str, preset: str, mix: torch.Tensor, sample_rate: int, segment: float | None,
            sources: list[str]) -> dict:
    from mss_tools.apply import separate_tensor
    from mss_tools.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, sources, mix.shape[0], sample_rate, preset=preset).eval()
    segment = segment or model.segment
    with torch.no_grad():
        whole = model(mix.unsqueeze(0))[0]
        row = {"arch": arch, "stft_hop": model.stft_hop, "segment": segment}
        row["off_grid_025"] = snr_db(whole, separate_tensor(WithoutFrameHop(model), mix, segment, overlap=0.25))
        for overlap in (0.25, 0.5):
            row[f"on_grid_{overlap:.2f}".replace(".", "")] = snr_db(whole, separate_tensor(model, mix, segment,
                                                                                          overlap=overlap))
    return row


def measure_trained(checkpoint: str, mixes: list[torch.Tensor]) -> dict:
    """Median over ``mixes`` of the SNR (dB) of chunked against whole-track output of a trained checkpoint."""
    from mss_tools.apply import separate_tensor
    from mss_tools.checkpoint import load_model

    model = load_model(checkpoint).eval()
    settings = {"own_025": (1, 0.25), "own_050": (1, 0.5), "x2_025": (2, 0.25), "x4_025": (4, 0.25)}
    values: dict[str, list[float]] = {key: [] for key in settings}
    with torch.no_grad():
        for mix in mixes:
            whole = model(mix.unsqueeze(0))[0]
            for key, (factor, overlap) in settings.items():
                segment = min(factor * model.segment, mix.shape[-1] / model.sample_rate)
                values[key].append(snr_db(whole, separate_tensor(model, mix, segment, overlap=overlap)))
    row = {key: float(torch.tensor(v).median()) for key, v in values.items()}
    return row | {"arch": model.arch, "segment": model.segment, "checkpoint": checkpoint}


def main_trained(args) -> None:
    from mss_tools.cache import StemCache

    cache = StemCache(args.cache)
    tracks = cache.tracks("test")[: args.tracks]
    mixes = [torch.from_numpy(cache.read_mixture("test", t)).float() for t in tracks]
    print(f"{len(tracks)} test tracks of {args.cache} ({cache.sample_rate} Hz); median SNR in dB of chunked "
          "against whole-track output")
    print("| checkpoint | arch | segment s | own segment, overlap 0.25 | own, 0.5 | 2x segment, 0.25 "
          "| 4x segment, 0.25 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints.split(","):
        row = measure_trained(checkpoint, mixes)
        print(f"| {checkpoint} | {row['arch']} | {row['segment']:g} | {row['own_025']:.1f} | {row['own_050']:.1f} | "
              f"{row['x2_025']:.1f} | {row['x4_025']:.1f} |", flush=True)


def main() -> None:
    from mss_tools.models import ARCHITECTURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated (default: all)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--segment", type=float, default=None, help="chunk seconds (default: each model's)")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--checkpoints", help="comma-separated trained checkpoints (needs --cache)")
    parser.add_argument("--cache", help="stem cache whose test tracks the checkpoints separate")
    parser.add_argument("--tracks", type=int, default=4, help="test tracks used with --checkpoints")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.checkpoints:
        if not args.cache:
            parser.error("--checkpoints needs --cache")
        main_trained(args)
        return
    mix = synthetic_track(args.seconds, args.sample_rate)
    print(f"{args.seconds:g} s stereo at {args.sample_rate} Hz, preset {args.preset}, random init (seed 0); "
          "SNR in dB of chunked against whole-track output")
    print("| arch | stft_hop | segment s | off grid, overlap 0.25 | on grid, 0.25 | on grid, 0.5 |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        row = measure(arch, args.preset, mix, args.sample_rate, args.segment, args.sources.split(","))
        print(f"| {row['arch']} | {row['stft_hop']} | {row['segment']:g} | {row['off_grid_025']:.1f} | "
              f"{row['on_grid_025']:.1f} | {row['on_grid_050']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
