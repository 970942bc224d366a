"""The `fcn` command line."""
import subprocess
import sys

import pytest

import fcn
from fcn.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert fcn.__version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_python_m_fcn_entry_point():
    out = subprocess.run([sys.executable, "-m", "fcn", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"fcn {fcn.__version__}"


def test_demo_agrees_with_aten(capsys):
    assert main(["demo", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "-> OK" in out and "FCN-32s" in out


def test_bad_arguments_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--repeat", "0"])
    assert e.value.code == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])
