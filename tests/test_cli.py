import subprocess
import sys

import pytest
from click.testing import CliRunner

from mss_tools.cli.main import SUBCOMMANDS, main
from tests.conftest import run_mss


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from mss_tools.cli.main import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_help_has_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"mss {name}" in result.output


def test_python_dash_m_entry_point():
    result = run_mss("--version")
    assert result.returncode == 0
    assert "mss" in result.stdout


def test_unknown_architecture_is_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--arch", "nope", "--print-config", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert "unknown architecture 'nope'" in result.output


def test_print_config_and_arch_opt_type_checking(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--arch", "unet", "--preset", "small", "--arch-opt", "depth=3",
                                  "--print-config", "unused.h5"])
    assert result.exit_code == 0, result.output
    assert '"depth": 3' in result.output and '"channels": 12' in result.output
    bad = runner.invoke(main, ["train", "--arch", "unet", "--arch-opt", "depth=three", "--print-config", "x.h5"])
    assert bad.exit_code == 2 and "option depth: expected int" in bad.output
    unknown = runner.invoke(main, ["train", "--arch", "unet", "--arch-opt", "dept=3", "--print-config", "x.h5"])
    assert unknown.exit_code == 2 and "unknown option 'dept'" in unknown.output
