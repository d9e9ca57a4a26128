"""Speed of the new architectures against their reference implementations, side by side in one process.

For each pair (ours, the reference at the same configuration and size): forward and
forward+backward seconds per second of stereo audio (median of ``--repeats``), and the ratio
ours / theirs (below 1: ours is faster). Both are built at ``--preset`` (default ``small``, for the
CPU; ``paper`` on a GPU) and take the same input; the pairs are measured alternately, so that a
noisy machine affects both alike.

References, never project dependencies; put them on ``PYTHONPATH`` (see
``tests/test_roformer_reference.py`` and ``tests/test_scnet_reference.py``):

- ``bs-roformer`` 0.3.10 (``bs_roformer``): BS-RoFormer and Mel-Band RoFormer;
- the SCNet authors' ``scnet.py`` and ``separation.py`` as a package ``scnet_official``;
- ``demucs`` 4.0.1 (``demucs.htdemucs``): HTDemucs (see ``tests/test_htdemucs_reference.py``).

    PYTHONPATH=/tmp/ref python benchmarks/bench_reference_speed.py --seconds 4 --batch 2
    PYTHONPATH=/tmp/ref python benchmarks/bench_reference_speed.py --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from mss_tools.losses import l1_wave
from mss_tools.models import build_model


def roformer_pair(arch: str, preset: str, sample_rate: int, sources: list[str]):
    ours = build_model(arch, sources, 2, sample_rate, preset=preset,
                       overrides={"ff_mult": 4, "mask_mult": 4, "attn_dropout": 0.0, "ff_dropout": 0.0})
    config = ours.config
    common = dict(dim=config.dim, depth=config.depth, stereo=True, num_stems=len(sources),
                  time_transformer_depth=config.time_depth, freq_transformer_depth=config.band_depth,
                  dim_head=config.dim_head, heads=config.heads, stft_n_fft=ours.stft.n_fft,
                  stft_hop_length=ours.stft.hop_length, stft_win_length=ours.stft.n_fft)
    if arch == "bs_roformer":
        module = importlib.import_module("bs_roformer.bs_roformer")
        theirs = module.BSRoformer(freqs_per_bands=tuple(ours.band_widths),
                                   mask_estimator_depth=config.mask_hidden_layers + 1, **common)
    else:
        module = importlib.import_module("bs_roformer.mel_band_roformer")
        theirs = module.MelBandRoformer(num_bands=config.num_bands, sample_rate=sample_rate, attn_dropout=0.0,
                                        ff_dropout=0.0, mask_estimator_depth=config.mask_hidden_layers, **common)
    return ours, theirs


def scnet_pair(preset: str, sample_rate: int, sources: list[str]):
    module = importlib.import_module("scnet_official.scnet")
    ours = build_model("scnet", sources, 2, sample_rate, preset=preset)
    config = ours.config
    theirs = module.SCNet(sources=sources, dims=[4] + [config.channels * 2 ** i for i in range(config.depth)],
                          num_dplayer=config.dual_path_layers, nfft=ours.stft.n_fft, hop_size=ours.stft.hop_length,
                          win_size=ours.stft.n_fft)
    return ours, theirs


def htdemucs_pair(preset: str, sample_rate: int, sources: list[str]):
    """Ours with the reference's weights copied in; the reference takes its input as it is
    (``use_train_segment=False``: no padding up to a training segment), as ours does."""
    module = importlib.import_module("demucs.htdemucs")
    ours = build_model("htdemucs", sources, 2, sample_rate, preset=preset)
    config = ours.config
    theirs = module.HTDemucs(sources=sources, samplerate=sample_rate, nfft=ours.stft.n_fft, channels=config.channels,
                             depth=config.depth, dconv_mode=config.dconv_mode, bottom_channels=config.bottom_channels,
                             t_layers=config.t_layers, t_heads=config.t_heads, t_dropout=config.t_dropout,
                             use_train_segment=False)
    mine = ours.state_dict()
    ours.load_state_dict(dict(zip(mine, theirs.state_dict().values(), strict=True)))
    return ours, theirs


PAIRS = {"scnet": scnet_pair, "htdemucs": htdemucs_pair}


def timings(model, mix: torch.Tensor, repeats: int, sync) -> tuple[float, float]:
    """Median seconds of a forward pass (no grad, eval) and of a forward+backward pass (train)."""
    forward, backward = [], []
    for _ in range(repeats + 1):  # the first of each is a warm-up
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            model(mix)
        sync()
        forward.append(time.perf_counter() - start)
        model.train()
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(mix)
        l1_wave(out, torch.zeros_like(out)).backward()
        sync()
        backward.append(time.perf_counter() - start)
    return statistics.median(forward[1:]), statistics.median(backward[1:])


def spread(mine, reference, which: int) -> str:
    """The ratios of the single rounds: lowest, median, highest."""
    ratios = [m[which] / r[which] for m, r in zip(mine, reference)]
    return f"[{min(ratios):.2f} {statistics.median(ratios):.2f} {max(ratios):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="bs_roformer,mel_roformer,scnet,htdemucs")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of ours and theirs; the table takes "
                        "each side's best round, the brackets give the single rounds' ratios: lowest, median, highest")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sources = ["vocals", "drums", "bass", "other"]
    audio = args.seconds * args.batch
    print(f"{args.device}, {torch.get_num_threads()} threads, {args.sample_rate} Hz, batch {args.batch} x "
          f"{args.seconds:g} s stereo, preset {args.preset}, 4 stems; seconds per second of audio (median of "
          f"{args.repeats}, best of {args.rounds} rounds); ratio = ours / theirs; [lowest median highest] "
          f"of the single rounds' ratios")
    print(f"{'arch':13s} {'params':>11s} {'fwd ours':>9s} {'fwd ref':>9s} {'ratio':>6s} {'f+b ours':>9s} "
          f"{'f+b ref':>9s} {'ratio':>6s}  {'fwd rounds':16s}  f+b rounds")
    for arch in args.archs.split(","):
        try:
            ours, theirs = (PAIRS[arch](args.preset, args.sample_rate, sources) if arch in PAIRS
                            else roformer_pair(arch, args.preset, args.sample_rate, sources))
        except ModuleNotFoundError as exc:
            print(f"{arch:13s} skipped: reference not importable ({exc})")
            continue
        ours, theirs = ours.to(device), theirs.to(device)
        ours_params = ours.num_parameters
        theirs_params = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
        assert ours_params == theirs_params, (arch, ours_params, theirs_params)
        torch.manual_seed(0)
        hop = ours.stft.hop_length
        mix = 0.3 * torch.randn(args.batch, 2, int(args.seconds * args.sample_rate) // hop * hop, device=device)
        mine, reference = [], []
        for index in range(args.rounds):  # alternate (and swap who goes first), so that drifts hit both
            pair = [(mine, ours), (reference, theirs)]
            for results, model in pair if index % 2 == 0 else pair[::-1]:
                results.append(timings(model, mix, args.repeats, sync))
        fwd = min(m[0] for m in mine) / audio, min(r[0] for r in reference) / audio
        bwd = min(m[1] for m in mine) / audio, min(r[1] for r in reference) / audio
        print(f"{arch:13s} {ours_params:11,d} {fwd[0]:9.4f} {fwd[1]:9.4f} {fwd[0] / fwd[1]:6.2f} {bwd[0]:9.4f} "
              f"{bwd[1]:9.4f} {bwd[0] / bwd[1]:6.2f}  {spread(mine, reference, 0)}  {spread(mine, reference, 1)}",
              flush=True)


if __name__ == "__main__":
    main()
