import subprocess
import sys

import pytest

from simed_stream.cli import build_parser, main

SUBCOMMANDS = [["simulate"], ["simulate", "dataset"], ["simulate", "preview"], ["detector"], ["receive"], ["train"], ["evaluate"], ["demo"]]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "simulate" in out and "demo" in out


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*words, "--help"])
    assert exit_info.value.code == 0
    assert "usage: simed " + " ".join(words) in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    code = main(["simulate", "dataset", "--preset", "cpu", "--pdb", str(tmp_path / "nope.pdb"),
                 "--orientations", "1", "--seed", "1", "--out", str(tmp_path / "x.h5")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.pdb does not exist" in err and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "simed_stream.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("simed ")
