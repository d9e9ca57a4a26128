"""Parameter counts of the models a study question compares, side by side, with their ratio.

Q2 compares demucs_attn with demucs_lstm (a Transformer against a BiLSTM bottleneck), Q3
bsrnn_se with bsrnn; a controlled comparison needs the pair at (nearly) the same size. For
every preset of the pair and every recipes/conf folder, the two counts and second / first.
Counted on the meta device (no memory, no weights), so it takes seconds.

    python benchmarks/bench_param_match.py                      # 4 stems, 44.1 kHz
    python benchmarks/bench_param_match.py --sources vocals --sample-rate 22050
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PAIRS = (("demucs_lstm", "demucs_attn"), ("bsrnn", "bsrnn_se"))
CONF_ROOT = Path(__file__).resolve().parent.parent / "recipes" / "conf"


def parameter_count(arch: str, sources: list[str], sample_rate: int, preset: str, options: dict) -> int:
    """Parameters of ``arch`` at ``preset`` with ``options``, built on the meta device."""
    from mss_tools.models import build_model, model_class

    if "rescale" in model_class(arch).DEFAULTS:
        options = {**options, "rescale": 0.0}  # rescaling is slow on meta tensors and changes no count
    with torch.device("meta"):
        return build_model(arch, sources, 2, sample_rate, preset=preset, overrides=options).num_parameters


def conf_options(folder: Path, arch: str) -> tuple[str, dict] | None:
    """(preset, --arch-opt) of ``recipes/conf/<folder>/<arch>.json``, or None if there is none."""
    path = folder / f"{arch}.json"
    if not path.is_file():
        return None
    conf = json.loads(path.read_text())
    options = conf.get("arch-opt", {})
    if isinstance(options, list):
        options = dict(item.split("=", 1) for item in options)
    return conf.get("preset", "small"), options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="vocals,drums,bass,other")
    parser.add_argument("--sample-rate", type=int, default=44100)
    args = parser.parse_args()
    from mss_tools.models import model_class

    sources = args.sources.split(",")
    print(f"{len(sources)} stems ({args.sources}), {args.sample_rate} Hz, stereo")
    print(f"{'pair':26s} {'setting':16s} {'first':>14s} {'second':>14s} {'ratio':>8s}")
    for first, second in PAIRS:
        settings = [(f"preset {name}", name, {}) for name in model_class(first).PRESETS
                    if name in model_class(second).PRESETS]
        for folder in sorted(p for p in CONF_ROOT.iterdir() if p.is_dir()):
            confs = conf_options(folder, first), conf_options(folder, second)
            if None not in confs and confs[0] == confs[1]:
                settings.append((f"conf {folder.name}", *confs[0]))
        for label, preset, options in settings:
            a = parameter_count(first, sources, args.sample_rate, preset, options)
            b = parameter_count(second, sources, args.sample_rate, preset, options)
            print(f"{first + ' / ' + second:26s} {label:16s} {a:14,d} {b:14,d} {b / a:8.5f}", flush=True)


if __name__ == "__main__":
    main()
