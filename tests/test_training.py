"""A few training steps of the refining network on a tiny simulated dataset with its engine
sidecar: run, checkpoint, resume, export a phaser card that loads; and `simed evaluate` on it."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from simed_stream.errors import SimedError
from simed_stream.phasing.training import TrainConfig, build_generator, train
from simulator.dataset import DatasetRequest, simulate_dataset

from conftest import BPTI, UBIQUITIN, small_config, write_tiny_phaser


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """BPTI and ubiquitin, 4 orientations each in a 60 Å box, with an engine sidecar from a tiny engine."""
    from simed_stream.phasing.classical import Geometry

    folder = tmp_path_factory.mktemp("tiny")
    config = small_config(box_A=60.0, gpts=144, image_field_A=60.0, image_size_px=72)
    path = simulate_dataset(DatasetRequest([BPTI, UBIQUITIN], 4, 2, folder / "tiny.h5", config, progress=False))
    import h5py

    with h5py.File(path) as f:
        geometry = Geometry.from_attrs(f.attrs)
    # this box is its image field: a tight support keeps the oversampling above 2
    card = write_tiny_phaser(folder / "engine", dict(geometry.__dict__), network=False, support_dilation_A=1.0,
                             support_threshold=0.4)
    result = subprocess.run([sys.executable, "tools/precompute_engine.py", str(path), "--settings", str(card),
                             "--threads", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return path


def _config(tmp_path, dataset, **changes):
    values = dict(datasets=[str(dataset)], validation_proteins=["1ubq"], out=str(tmp_path / "run"), steps=4,
                  batch_size=2, width=8, depth=2, checkpoint_every=2, sample_every=4, validation_samples=2)
    values.update(changes)
    return TrainConfig(**values)


def test_training_runs_checkpoints_resumes_and_exports(tmp_path, tiny_dataset):
    model = train(_config(tmp_path, tiny_dataset))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["reconstruction"])) for r in rows)
    assert rows[1]["val_frc05_A"] and (tmp_path / "run" / "samples-000004.png").exists()
    state = torch.load(model, weights_only=True)  # plain tensors only: safe to load
    generator = build_generator(_config(tmp_path, tiny_dataset))
    generator.load_state_dict(state)
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["training"]["validation_proteins"] == ["1ubq"] and card["training"]["proteins"] == ["1bpi"]
    assert card["engine"]["starts"] == 2 and card["network"]["architecture"]["name"] == "ResidualRefiner"
    from simed_stream.phasing.inference import Phaser

    assert Phaser(tmp_path / "run", "cpu").network is not None  # the exported card is a working phaser
    # model.pt is the best validated checkpoint (GAN training can collapse), not the last
    validated = [(float(r["val_frc05_A"]), int(r["step"])) for r in rows if r["val_frc05_A"]]
    best = min(v for v, _ in validated)  # the CSV rounds to 0.001 Å: two steps can tie there
    assert card["training"]["steps"] in {step for v, step in validated if v == best}
    # resume: more steps continue from the checkpoint, not from scratch
    train(_config(tmp_path, tiny_dataset, steps=6))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SimedError, match="another configuration"):
        train(_config(tmp_path, tiny_dataset, steps=8, learning_rate=1e-3))


def test_fine_tuning_without_the_adversary(tmp_path, tiny_dataset):
    """λ = 0 trains on reconstruction only (no discriminator step); init_generator starts from a model."""
    first = train(_config(tmp_path, tiny_dataset, steps=2))
    start = torch.load(first, weights_only=True)
    tuned = train(_config(tmp_path, tiny_dataset, out=str(tmp_path / "tuned"), steps=2, lambda_adversarial=0.0,
                          init_generator=str(first), learning_rate=1e-9))
    rows = list(csv.DictReader(open(tmp_path / "tuned" / "metrics.csv")))
    assert all(float(r["discriminator"]) == 0.0 and float(r["generator_adversarial"]) == 0.0 for r in rows)
    after = torch.load(tuned, weights_only=True)
    # a vanishing learning rate: the tuned model is the initial one, not a fresh random network
    assert all(torch.allclose(start[k], after[k], atol=1e-5) for k in start)


def test_split_errors_are_specific(tmp_path, tiny_dataset):
    with pytest.raises(SimedError, match="not in the datasets"):
        train(_config(tmp_path, tiny_dataset, validation_proteins=["9xyz"]))
    with pytest.raises(SimedError, match="no training"):
        train(_config(tmp_path, tiny_dataset, validation_proteins=["1ubq", "1bpi"]))
    with pytest.raises(SimedError, match="precompute_engine"):
        train(_config(tmp_path, tiny_dataset, sidecars=[str(tmp_path / "missing.engine.h5")]))


def test_cli_train_reads_yaml(tmp_path, tiny_dataset):
    config = _config(tmp_path, tiny_dataset, steps=2, consistency=False)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    result = subprocess.run([sys.executable, "-m", "simed_stream.cli", "-q", "train", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path.write_text("datasets: []\nvalidation_proteins: []\nout: x\nlearnig_rate: 1\n")
    result = subprocess.run([sys.executable, "-m", "simed_stream.cli", "train", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "learnig_rate" in result.stderr and "learning_rate" in result.stderr


def test_evaluate_scores_every_method_and_writes_the_report(tmp_path, tiny_dataset):
    """On a dataset with no sidecar of its own: the phaser's card says how to phase."""
    from simed_stream.phasing import evaluation

    train(_config(tmp_path, tiny_dataset, steps=2))
    dataset = tmp_path / "copy.h5"
    dataset.write_bytes(tiny_dataset.read_bytes())  # no .engine.h5 beside it
    report = evaluation.evaluate(tmp_path / "run", dataset, tmp_path / "eval", samples_per_protein=2,
                                 doses=[1e4, 1e9], workers=1,
                                 classical=evaluation.HIOSettings(hio_iterations=20, er_iterations=5))
    assert report["samples"] == 4 and report["proteins_seen_in_making_the_phaser"] == ["1bpi", "1ubq"]
    assert set(report["mean"]["frc05_A"]) == set(report["success_rate"]) == set(evaluation.METHODS)
    assert set(report["per_protein"]) == {"1bpi", "1ubq"}
    samples = report["per_sample"]
    for method in evaluation.METHODS:  # the summaries are what the per-sample scores say
        values = [r["frc05_A"][method] for r in samples]
        assert report["mean"]["frc05_A"][method] == pytest.approx(np.mean(values))
        assert report["success_rate"][method] == np.mean(np.array(values) <= 3.0)
        ubq = [r["frc05_A"][method] for r in samples if r["protein"] == "1ubq"]
        assert report["per_protein"]["1ubq"]["frc05_A"][method] == pytest.approx(np.mean(ubq))
    # the low-res input cannot beat its own 5 mrad cutoff (5 Å)
    assert min(r["frc05_A"]["lowres_input"] for r in samples) > 4.5
    assert set(report["dose"]["curve"]) == {"10000", "1e+09"}
    for name in ("report.json", "frc.png", "gallery.png", "dose.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 100
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["mean"]["frc05_A"]["gan"] == pytest.approx(report["mean"]["frc05_A"]["gan"])
