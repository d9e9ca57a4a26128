"""Time ``demucs_lstm`` and ``demucs_attn`` against the Demucs class of the ``demucs`` package.

Each of our models is paired with a peer of the same size, built in the same run:

- ``demucs_lstm`` vs ``demucs.demucs.Demucs`` (demucs 4.x) configured as Demucs v2: GLU
  rewrites, ReLU, no group norm, no DConv branches, no x2 resampling, decoder context 3,
  a 2-layer BiLSTM at the bottleneck. The two are the same network: the benchmark copies
  the peer's weights into ours and prints the largest output difference.
- ``demucs_attn`` vs the same peer backbone whose bottleneck is replaced by the package's own
  Transformer layers (``demucs.transformer.MyTransformerEncoderLayer``, pre-norm, GELU, as in
  HT-Demucs) with its sinusoidal embedding, sized like ours (the package ships no waveform
  Demucs with a Transformer bottleneck, so this is the nearest public configuration).

For every pair it prints both parameter counts, then forward (eval, no grad) and
forward+backward (train, L1 loss) milliseconds per second of stereo audio (medians of
interleaved repeats after warm-ups) and the ratio ours / theirs (below 1: ours is faster), the
median of the ratios of back-to-back runs, which holds up better on a shared machine.
Without an importable ``demucs`` package it says so and times ours alone.

    python benchmarks/bench_demucs_peer.py --threads 2 --configs small,paper
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from mss_tools.models import build_model

SOURCES = ["drums", "bass", "other", "vocals"]
CONFIGS = {
    # name: (preset, sample rate, batch, seconds of audio per item, warm-ups, repeats)
    "small": ("small", 22050, 4, 4.0, 2, 7),
    "paper": ("paper", 44100, 1, 2.0, 1, 5),
}


def load_peer():
    """``(Demucs, MyTransformerEncoderLayer, create_sin_embedding, version)`` or a reason string."""
    try:
        import demucs
        from demucs.demucs import Demucs
        from demucs.transformer import MyTransformerEncoderLayer, create_sin_embedding
    except ImportError as exc:
        return f"demucs is not importable ({exc})"
    if "dconv_mode" not in inspect.signature(Demucs.__init__).parameters:
        return f"demucs {getattr(demucs, '__version__', '?')} has no v3/v4-style Demucs class"
    return Demucs, MyTransformerEncoderLayer, create_sin_embedding, getattr(demucs, "__version__", "?")


class PeerTransformerBottleneck(nn.Module):
    """Layer norm, the package's sinusoidal embedding, then its Transformer layers; (B, C, T) in and out."""

    def __init__(self, layer_class, embedding, dim: int, layers: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.norm_in = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            layer_class(dim, heads, dim_feedforward=ff, dropout=dropout, activation=F.gelu,
                        norm_first=True, batch_first=True)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(x.transpose(1, 2))
        y = y + self.embedding(y.shape[1], y.shape[2], device=y.device).transpose(0, 1)
        for layer in self.layers:
            y = layer(y)
        return y.transpose(1, 2)


def build_peer(peer, arch: str, config: dict, sample_rate: int, bottleneck_channels: int) -> nn.Module:
    demucs_class, layer_class, embedding, _ = peer
    depth = config["depth"]
    model = demucs_class(
        SOURCES, audio_channels=2, channels=config["channels"], growth=config["growth"], depth=depth,
        rewrite=True, lstm_layers=config.get("lstm_layers", 0), kernel_size=config["kernel_size"],
        stride=config["stride"], context=config["context"] // 2, gelu=False, glu=True, norm_starts=depth,
        dconv_mode=0, normalize=config["normalize"], resample=False, rescale=config["rescale"],
        samplerate=sample_rate,
    )
    if arch == "demucs_attn":
        model.lstm = PeerTransformerBottleneck(layer_class, embedding, bottleneck_channels, config["attn_layers"],
                                               config["attn_heads"], int(round(config["attn_ff"] * bottleneck_channels)),
                                               config["attn_dropout"])
    return model


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_step(model: nn.Module, mix: torch.Tensor, target: torch.Tensor) -> None:
    with torch.no_grad():
        model(mix)


def train_step(model: nn.Module, mix: torch.Tensor, target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    (model(mix) - target).abs().mean().backward()


def time_pair(models: list[nn.Module], step, mix, target, warmup: int, repeats: int, clock) -> list[list[float]]:
    """Seconds of ``step`` per repeat for each model; repeats interleaved, order alternating, so that
    the machine's slow drifts hit both models alike."""
    for model in models:
        for _ in range(warmup):
            step(model, mix, target)
    times: list[list[float]] = [[] for _ in models]
    for repeat in range(repeats):
        order = range(len(models)) if repeat % 2 == 0 else reversed(range(len(models)))
        for index in order:
            start = clock()
            step(models[index], mix, target)
            times[index].append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="small,paper", help="comma-separated among: " + ", ".join(CONFIGS))
    parser.add_argument("--archs", default="demucs_lstm,demucs_attn")
    parser.add_argument("--warmup", type=int, help="warm-up steps per model (default: per configuration)")
    parser.add_argument("--repeats", type=int, help="timed steps per model (default: per configuration)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, steadier on a busy machine "
                             "(with --threads 1 it counts the work itself)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    peer = load_peer()
    print(f"torch {torch.__version__}, {args.threads} threads, device cpu, {args.clock} clock; "
          f"times: medians over repeats; "
          f"ratio: median of the per-repeat ratios of adjacent runs")
    if isinstance(peer, str):
        print(f"peer: skipped: {peer}")
        peer = None
    else:
        print(f"peer: demucs {peer[3]}")

    rows = []
    for config_name in args.configs.split(","):
        preset, sample_rate, batch, seconds, warmup, repeats = CONFIGS[config_name]
        warmup = warmup if args.warmup is None else args.warmup
        repeats = repeats if args.repeats is None else args.repeats
        audio_seconds = batch * seconds
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            ours = build_model(arch, SOURCES, 2, sample_rate, preset=preset)
            models = [ours]
            if peer is not None:
                torch.manual_seed(0)
                theirs = build_peer(peer, arch, ours.config, sample_rate, ours.bottleneck_channels)
                models.append(theirs)
            label = f"{arch}/{config_name} (channels {ours.config['channels']}, depth {ours.config['depth']}, " \
                    f"{sample_rate} Hz, batch {batch} x {seconds:g} s, {warmup} warm-up, {repeats} repeats)"
            print(f"\n{label}")
            print(f"  parameters: ours {count(ours):,}" + (f", theirs {count(models[1]):,}" if peer else ""))
            mix = torch.randn(batch, 2, int(seconds * sample_rate))
            target = torch.randn(batch, len(SOURCES), 2, mix.shape[-1])
            if peer is not None and arch == "demucs_lstm":
                ours.load_state_dict(dict(zip(ours.state_dict(), models[1].state_dict().values())))
                with torch.no_grad():
                    gap = (ours.eval()(mix[:1]) - models[1].eval()(mix[:1])).abs().max().item()
                print(f"  same weights -> max |ours - theirs| = {gap:.2e}")
            for mode, step in (("forward", forward_step), ("forward+backward", train_step)):
                for model in models:
                    model.train(mode != "forward")
                times = time_pair(models, step, mix, target, warmup, repeats, clock)
                per_second = [statistics.median(t) / audio_seconds for t in times]
                line = f"  {mode:17s} ours {per_second[0] * 1000:8.1f} ms per s of audio"
                if peer is not None:
                    ratio = statistics.median(a / b for a, b in zip(*times))
                    line += f", theirs {per_second[1] * 1000:8.1f} ms, ratio ours/theirs {ratio:.3f}"
                    rows.append((arch, config_name, mode, ratio))
                print(line, flush=True)

    if rows:
        print("\nsummary (ratio ours/theirs, goal <= 1.0):")
        for arch, config_name, mode, ratio in rows:
            print(f"  {arch:12s} {config_name:6s} {mode:17s} {ratio:.3f}")


if __name__ == "__main__":
    main()
