import subprocess
import sys

import pytest

from simed_stream.cli import build_parser, main

SUBCOMMANDS = [["simulate"], ["simulate", "dataset"], ["simulate", "preview"], ["detector"], ["receive"], ["train"], ["evaluate"], ["demo"],
               ["simulate", "scan"], ["reprocess"], ["run"], ["replay"], ["phase-worker"]]


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


def test_demo_runs_the_live_chain_with_the_shipped_model(tmp_path, capsys):
    """The README's main job, for real: abTEM, scan, fake detector → live pipeline → stack."""
    import json

    import mrcfile
    import starfile

    code = main(["demo", "--out", str(tmp_path), "--particles", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1
    status = json.loads((runs[0] / "status.json").read_text())
    assert status["state"] == "stopped" and status["pipeline"]["particles_phased"] >= 3
    series_dir = next(p for p in runs[0].iterdir() if (p / "particles.star").exists())
    star = starfile.read(series_dir / "particles.star", always_dict=True)
    assert len(star["particles"]) == status["pipeline"]["particles_phased"]
    for stack in series_dir.glob("particles_*.mrcs"):
        assert mrcfile.validate(str(stack))
    assert (series_dir / "report.png").stat().st_size > 0
    assert "picking F1" in out
    result = json.loads((series_dir / "result.json").read_text())
    assert result["pick_score"]["f1"] >= 0.75 and result["frc05_A_vs_truth"]["particles"] >= 3
