import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest

from simed_stream import __version__
from simed_stream.cli import SETTINGS_COMMANDS, build_parser, main
from simed_stream.cli.options import settings_fields, settings_from_args
from simed_stream.cli.simulate import SimulateScanCommand

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
    """The `simed` script pip installed beside this Python (not `python -m`): it runs this CLI."""
    script = Path(sys.executable).parent / "simed"
    assert script.is_file() and os.access(script, os.X_OK), f"no console script at {script}"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"simed {__version__}\n", version
    usage = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "--min-coverage" in usage.stdout


# ---------------------------------------------------------------- one settings model per command

def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in name.split():
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[word]
    return parser


def _other_valid_value(key: str, info):
    """A value for the setting that is valid and differs from its default: the flag and the YAML
    key must both carry it to the same place."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)
    default = None if info.is_required() else info.default
    candidates = {"device": ["cpu"], "data_endpoint": ["tcp://127.0.0.1:40001"], "scheduler": ["local"],
                  "rate": [500.0], "web": ["127.0.0.1:8765"],
                  "web_token": ["sixteen-or-more-chars"], "name": ["detector-pc"]}.get(key.rsplit(".", 1)[-1], [])
    annotation = info.annotation
    if getattr(annotation, "__origin__", None) is Union:  # Optional[X]: a value of X
        annotation = next(arg for arg in annotation.__args__ if arg is not type(None))
    if annotation is str:
        candidates.append(f"tcp://127.0.0.1:{40000 + len(key)}")
    if getattr(annotation, "__origin__", None) is list:
        candidates += [[Path("a.h5"), Path("b.h5")]]
    if getattr(annotation, "__origin__", None) is tuple:
        candidates += [(3, 3), (2.0, 0.0, 1.5, 0.0, 2.0, 2.5)]
    for option in getattr(annotation, "__args__", ()) if getattr(annotation, "__origin__", None) is Literal else ():
        candidates.append(option)
    candidates += [not default if isinstance(default, bool) else None, Path("elsewhere") / key, 3, 0.5, 0.25, 12.5]
    for value in candidates:
        if value is None or value == default:
            continue
        try:
            return adapter.validate_python(value, strict=True)
        except ValueError:
            continue
    raise AssertionError(f"no other valid value found for {key}")


def _argv(key: str, value, info, positional: bool) -> list[str]:
    if positional:
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    flag = (info.json_schema_extra or {}).get("cli_flags") or ["--" + key.rsplit(".", 1)[-1].replace("_", "-")]
    if isinstance(value, bool):
        return [flag[0] if value else "--no-" + flag[0][2:]]
    if isinstance(value, tuple):
        return [flag[0], ("x" if len(value) == 2 else ",").join(map(str, value))]  # HxW, or a matrix
    return [flag[0], *map(str, value)] if isinstance(value, list) else [flag[0], str(value)]


@pytest.mark.parametrize("name, model", [(name, model) for name, model, _, _ in SETTINGS_COMMANDS]
                         + [("simulate scan", SimulateScanCommand)])
def test_flags_and_yaml_keys_come_from_one_settings_model(name, model, tmp_path):
    """Every setting is a flag and a YAML key, and nothing else is: a value given either way lands
    in the same field (each one non-default, so a flag wired to another field would show)."""
    import yaml

    parser = _subparser(name)
    fields = dict(settings_fields(model))
    assert {a.dest for a in parser._actions if a.dest not in ("help", "config")} == set(fields)
    values = {key: _other_valid_value(key, info) for key, info in fields.items()}
    positional = {key for key, info in fields.items() if (info.json_schema_extra or {}).get("cli_positional")}
    argv = [arg for key, info in fields.items() for arg in _argv(key, values[key], info, key in positional)]
    from_flags = settings_from_args(model, parser.parse_args(argv))
    nested: dict = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        level = nested
        for part in parents:
            level = level.setdefault(part, {})
        level[leaf] = [str(v) for v in value] if isinstance(value, (list, tuple)) and isinstance(value[0], Path) \
            else list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(nested))
    from_yaml = settings_from_args(model, parser.parse_args(["--config", str(config)]))
    assert from_flags == from_yaml
    for key, value in values.items():
        target = from_flags
        for part in key.split("."):
            target = getattr(target, part)
        assert target == value, key


def test_simed_run_yaml_sets_the_chain_settings(tiny_phaser, tmp_path):
    """The drift this model ended: `simed run`'s YAML could not set what `replay`'s flags could."""
    from simed_stream.live.pipeline import LivePipeline
    from simed_stream.live.settings import LiveSettings

    config = tmp_path / "live.yaml"
    config.write_text(f"out: {tmp_path / 'out'}\nmodel: {tiny_phaser}\ndevice: cpu\nbatch_size: 3\nmin_coverage: 0.5\n")
    settings = settings_from_args(LiveSettings, _subparser("run").parse_args(["--config", str(config)]))
    pipeline = LivePipeline(settings)
    assert (settings.batch_size, settings.min_coverage) == (3, 0.5)
    assert pipeline.phaser.settings.starts == 2  # the tiny phaser's card, not the shipped one


def test_a_bad_setting_is_named_with_its_rule(tmp_path, capsys):
    code = main(["reprocess", str(tmp_path / "x.h5"), "--out", str(tmp_path), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size" in err and "greater than or equal to 1" in err and "Traceback" not in err


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


def test_the_live_yaml_in_the_docs_is_every_key_with_its_default():
    """docs/live.md shows every `simed run` key with its default: it must validate to the defaults."""
    import re

    import yaml

    from simed_stream.config import validate_config
    from simed_stream.live.settings import LiveSettings

    text = (Path(__file__).resolve().parent.parent / "docs" / "live.md").read_text()
    data = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    shown = {key for key, _ in settings_fields(LiveSettings) if key.split(".")[0] in data
             and (key.count(".") == 0 or key.split(".")[1] in data[key.split(".")[0]])}
    assert shown == {key for key, _ in settings_fields(LiveSettings)}
    assert validate_config(LiveSettings, data, "docs/live.md") == LiveSettings(out=data["out"])
