"""`mss train`'s options are TrainConfig's fields; remix shares MixSpec's; --print-config; --config."""

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

import mss_tools.mixing as mixing
import mss_tools.training as training
from mss_tools.cache import read_plan
from mss_tools.cli.main import main
from mss_tools.mixing import Augmentation, MixSpec
from mss_tools.models import ARCHITECTURES, model_class
from mss_tools.options import option_of
from mss_tools.train_config import TrainConfig
from tests.conftest import REPO, run_mss

NOT_TRAINING_OPTIONS = {"cache", "config", "print_config", "nproc", "output", "restart", "verbose", "quiet"}
AUGMENTATION = [f.name for f in dataclasses.fields(Augmentation)]


def _params(name):
    return {p.name: p for p in main.get_command(None, name).params}


def test_every_train_config_field_is_a_train_option_and_every_option_a_field():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = set(_params("train")) - NOT_TRAINING_OPTIONS
    assert options == fields - {"augment"} | set(AUGMENTATION) | {"no_augment"}
    params = _params("train")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("augment", "arch_options", "stage"):
            continue
        assert params[f.name].default == f.default, f.name
    assert params["arch_options"].opts == ["--arch-opt"] and params["arch_options"].multiple
    assert params["workers"].opts == ["-j", "--jobs"] and params["device"].opts == ["-d", "--device"]
    assert params["stage"].default is None  # not given: --sources decides (3 when neither is given)
    for name in AUGMENTATION:
        assert params[name].default == getattr(Augmentation(), name)


@pytest.fixture
def captured(monkeypatch):
    """The (cache, output, config) that `mss train` hands to training.train."""
    calls = []
    monkeypatch.setattr(training, "train", lambda cache, output, config, **kw: calls.append((cache, output, config)))
    return calls


def test_train_without_options_trains_the_default_config(captured):
    result = CliRunner().invoke(main, ["train", "c.h5"])
    assert result.exit_code == 0, result.output
    assert captured == [("c.h5", "exp/unet", TrainConfig())]


OPTIONS = {"arch": "bsrnn", "arch-opt": {"num_blocks": 2}, "targets": "vocals,bass", "jobs": 3, "sources": "2",
           "no-augment": True, "activation-checkpointing": True, "device": "cpu", "lr": 0.01, "gain-db": 3.0}
EXPECTED = TrainConfig(arch="bsrnn", arch_options={"num_blocks": "2"}, targets=["vocals", "bass"], workers=3,
                       active_sources=2, stage=1, augment=Augmentation.none(), activation_checkpointing=True,
                       device="cpu", lr=0.01)


def test_options_and_config_file_give_the_same_config(captured, tmp_path):
    line = ["--arch", "bsrnn", "--arch-opt", "num_blocks=2", "--targets", "vocals,bass", "-j", "3", "--sources", "2",
            "--no-augment", "--activation-checkpointing", "-d", "cpu", "--lr", "0.01", "--gain-db", "3"]
    assert CliRunner().invoke(main, ["train", *line, "c.h5", "-o", "x"]).exit_code == 0
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(OPTIONS))
    result = CliRunner().invoke(main, ["train", "--config", str(conf), "c.h5", "-o", "x"])
    assert result.exit_code == 0, result.output
    assert captured[0] == captured[1] == ("c.h5", "x", EXPECTED)
    partial = CliRunner().invoke(main, ["train", "--config", str(conf), "--sources", "3", "--lr", "0.1", "c.h5"])
    assert partial.exit_code == 0 and captured[2][2] == dataclasses.replace(EXPECTED, active_sources=3, stage=2, lr=0.1)


def test_remix_and_train_share_the_mix_options(monkeypatch):
    remix, train = _params("remix"), _params("train")
    shared = [f.name for f in dataclasses.fields(MixSpec) if option_of(f) and f.name != "augment"]
    assert shared == ["active_sources", "stage", "aligned_prob", "silent_keep"]
    for name in shared + AUGMENTATION + ["no_augment"]:
        a, b = remix[name], train[name]
        assert (a.opts, a.default, a.help, type(a.type)) == (b.opts, b.default, b.help, type(b.type)), name
        assert (getattr(a.type, "min", None), getattr(a.type, "max", None)) == \
               (getattr(b.type, "min", None), getattr(b.type, "max", None)), name
    specs = []
    monkeypatch.setattr(mixing, "make_plan", lambda cache, output, spec, *a, **kw: specs.append(spec))
    assert CliRunner().invoke(main, ["remix", "c.h5", "p.h5", "--target", "vocals"]).exit_code == 0
    assert CliRunner().invoke(main, ["remix", "c.h5", "p.h5", "--target", "vocals", "--stage", "2", "--aligned",
                                     "--no-augment"]).exit_code == 0
    assert specs == [MixSpec(targets=["vocals"], segment=6.0),
                     MixSpec(targets=["vocals"], segment=6.0, active_sources=3, stage=2, aligned_prob=1.0,
                             augment=Augmentation.none())]


def test_print_config_is_the_whole_resolved_config():
    conf_path = REPO / "recipes" / "conf" / "tiny" / "bsrnn.json"
    result = CliRunner().invoke(main, ["train", "--config", str(conf_path), "--targets", "vocals", "--stage", "2",
                                       "--print-config", "unused.h5"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {f.name for f in dataclasses.fields(TrainConfig)} | {"arch_config"}
    conf = json.loads(conf_path.read_text())
    assert (printed["epochs"], printed["steps_per_epoch"], printed["batch_size"], printed["segment"], printed["lr"]) \
        == (conf["epochs"], conf["steps-per-epoch"], conf["batch-size"], conf["segment"], conf["lr"])
    assert printed["targets"] == ["vocals"] and printed["stage"] == 2 and printed["active_sources"] == 3
    assert printed["arch_config"]["num_blocks"] == 1 and printed["arch_config"]["feature_dim"] == 8
    assert printed["loss"] == model_class("bsrnn").DEFAULT_LOSS
    assert printed["warmup_steps"] == 0 and printed["augment"] == dataclasses.asdict(Augmentation())


@pytest.mark.parametrize("arch", ["unet", "demucs_lstm"])
def test_print_config_segment_is_the_architectures_default_in_a_subprocess(arch, tmp_path):
    result = run_mss("train", "--arch", arch, "--print-config", tmp_path / "unused.h5", check=True)
    printed = json.loads(result.stdout)
    assert printed["segment"] == model_class(arch).DEFAULT_SEGMENT and printed["arch"] == arch
    assert printed["arch_config"] == model_class(arch).resolve_config(None, {})


def test_config_help_names_a_conf_that_exists():
    help_text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    named = re.findall(r"recipes/conf/[\w/]+\.json", help_text)
    assert named and all((REPO / name).is_file() for name in named)


def _remix(*args):
    return CliRunner().invoke(main, ["remix", *map(str, args)])


def test_remix_keeps_an_up_to_date_plan_and_draws_a_stale_one_again(demo_cache, tmp_path):
    plan = tmp_path / "plan.h5"
    args = [demo_cache, plan, "--target", "vocals", "--stage", 1, "--segment", 1, "--examples", 5, "--seed", 1]
    assert _remix(*args).exit_code == 0
    drawn = plan.stat().st_mtime_ns
    again = _remix(*args)
    assert again.exit_code == 0 and "up to date" in again.stderr
    assert plan.stat().st_mtime_ns == drawn
    assert _remix(*args[:-1], 2).exit_code == 0  # another seed: drawn again
    assert read_plan(plan)[2]["seed"] == 2
    shorter = _remix(*args[:7], 0.5, *args[8:])  # another segment
    assert shorter.exit_code == 0 and "up to date" not in shorter.stderr
    fields, _, attrs = read_plan(plan)
    assert attrs["segment_frames"] == 4000 and attrs["segment"] == 0.5 and len(fields["track"]) == 5
    drawn = plan.stat().st_mtime_ns
    forced = _remix(*args[:7], 0.5, *args[8:], "--force")
    assert forced.exit_code == 0 and "up to date" not in forced.stderr and plan.stat().st_mtime_ns != drawn


def test_arch_help_lists_every_registered_architecture():
    help_text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    listed = re.search(r"Architecture \(registry name\): ([\w, ]+)\.", help_text).group(1)
    assert listed.split(", ") == list(ARCHITECTURES)
