"""The live particle stack: real files, read back with starfile, mrcfile and by hand."""

import io
import os
import re

import mrcfile
import numpy as np
import pytest
import starfile

from simed_stream.errors import SimedError
from simed_stream.stack import Optics, StackWriter, column_name, read_stack

OPTICS = Optics(pixel_size_A=1.25, image_size_px=16, voltage_kV=300.0, spherical_aberration_mm=2.7,
                amplitude_contrast=0.07)


def batch(n, seed, micrograph="scan-0001"):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 16, 16)).astype(np.float32)
    rows = [{"micrograph": micrograph, "x_px": 10.5 + i, "y_px": 20.25 + 2 * i, "scan_y": i, "scan_x": 2 * i,
             "coverage": 0.875, "fourier_r": 0.123456789, "uncertainty": 0.01 * i, "model_sha256": "ab12" * 16,
             "protein": "1ubq"} for i in range(n)]
    return images, rows


def assert_clean(out_dir):
    """No temporary file left behind, and the STAR on disk parses."""
    assert not [name for name in os.listdir(out_dir) if name.endswith(".tmp") or name.startswith(".")]
    assert set(starfile.read(out_dir / "particles.star", always_dict=True)) == {"optics", "particles"}


def test_two_batches_round_trip(tmp_path):
    out = tmp_path / "stack" / "live"  # created, parents included
    first, second = batch(3, 1), batch(5, 2, micrograph="0007")
    with StackWriter(out, OPTICS) as writer:
        names = writer.write_batch(*first)
        assert names == ["000001@particles_0000.mrcs", "000002@particles_0000.mrcs", "000003@particles_0000.mrcs"]
        assert writer.count == 3
        assert_clean(out)
        names += writer.write_batch(*second)
        assert names[3:] == [f"{i:06d}@particles_0001.mrcs" for i in range(1, 6)]
        assert writer.count == 8
        assert_clean(out)

    blocks = starfile.read(out / "particles.star", always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert len(optics) == 1
    row = optics.iloc[0]
    assert row["rlnOpticsGroupName"] == "opticsGroup1" and row["rlnOpticsGroup"] == 1
    assert row["rlnImagePixelSize"] == pytest.approx(1.25)
    assert row["rlnMicrographOriginalPixelSize"] == pytest.approx(1.25)
    assert row["rlnVoltage"] == pytest.approx(300.0)
    assert row["rlnSphericalAberration"] == pytest.approx(2.7)
    assert row["rlnAmplitudeContrast"] == pytest.approx(0.07)
    assert row["rlnImageSize"] == 16 and row["rlnImageDimensionality"] == 2

    assert list(particles.columns[:5]) == ["rlnImageName", "rlnMicrographName", "rlnCoordinateX",
                                           "rlnCoordinateY", "rlnOpticsGroup"]
    assert list(particles.columns[5:]) == ["simedScanY", "simedScanX", "simedCoverage", "simedFourierR",
                                           "simedUncertainty", "simedModelSha256", "simedProtein"]
    assert list(particles["rlnImageName"]) == names
    assert (particles["rlnOpticsGroup"] == 1).all()
    assert particles["rlnCoordinateX"].tolist() == pytest.approx([r["x_px"] for r in first[1] + second[1]])
    assert particles["simedFourierR"].tolist() == pytest.approx([0.123456789] * 8, abs=1e-9)
    assert particles["simedScanX"].tolist() == [r["scan_x"] for r in first[1] + second[1]]
    assert (particles["simedModelSha256"] == "ab12" * 16).all()

    # each N@file points at the image that was written (RELION's index counts from 1)
    expected = np.concatenate([first[0], second[0]])
    for name, image in zip(names, expected):
        index, stack = name.split("@")
        with mrcfile.open(out / stack, permissive=False) as mrc:
            np.testing.assert_array_equal(mrc.data[int(index) - 1], image)
    for stack, n in (("particles_0000.mrcs", 3), ("particles_0001.mrcs", 5)):
        assert mrcfile.validate(out / stack, print_file=io.StringIO())
        with mrcfile.open(out / stack, permissive=False) as mrc:
            assert mrc.header.mode == 2 and mrc.data.dtype == np.float32
            assert mrc.is_image_stack() and mrc.header.ispg == 0 and mrc.data.shape == (n, 16, 16)
            assert mrc.voxel_size.x == pytest.approx(1.25) and mrc.voxel_size.y == pytest.approx(1.25)

    star, images = read_stack(out)
    np.testing.assert_array_equal(images, expected)
    assert list(star["particles"]["rlnMicrographName"]) == ["scan-0001"] * 3 + ["0007"] * 5  # not parsed as 7


def test_star_text_follows_relion_conventions(tmp_path):
    """Read by hand, not by starfile: loop_ blocks, '_rlnLabel #N' headers, N@file names."""
    with StackWriter(tmp_path, OPTICS) as writer:
        writer.write_batch(*batch(2, 3))
    text = (tmp_path / "particles.star").read_text()
    lines = [line.strip() for line in text.splitlines()]
    optics_at, particles_at = lines.index("data_optics"), lines.index("data_particles")
    assert optics_at < particles_at
    for start, end in ((optics_at, particles_at), (particles_at, len(lines))):
        block = [line for line in lines[start + 1:end] if line and not line.startswith("#")]
        assert block[0] == "loop_"
        labels = [line for line in block[1:] if line.startswith("_")]
        for number, label in enumerate(labels, 1):
            assert re.fullmatch(rf"_\w+ #{number}", label)
        values = [line.split() for line in block[1 + len(labels):]]
        assert values and all(len(v) == len(labels) for v in values)
        if start == particles_at:
            assert labels[0] == "_rlnImageName #1" and "_simedCoverage #8" in labels
            assert [v[0] for v in values] == ["000001@particles_0000.mrcs", "000002@particles_0000.mrcs"]
        else:
            assert "_rlnImageDimensionality #9" in labels and values[0][8] == "2"
            assert float(values[0][labels.index("_rlnImagePixelSize #7")]) == 1.25


def test_append_continues_numbering(tmp_path):
    with StackWriter(tmp_path, OPTICS) as writer:
        writer.write_batch(*batch(2, 4, micrograph="0007"))
    with StackWriter(tmp_path, OPTICS, append=True) as writer:
        assert writer.count == 2
        names = writer.write_batch(*batch(3, 5, micrograph="0007"))
        assert writer.count == 5
    assert names == [f"{i:06d}@particles_0001.mrcs" for i in range(1, 4)]
    star, images = read_stack(tmp_path)
    assert len(star["particles"]) == 5
    # the rows read back for appending keep their names as text: '0007', not 7
    assert (star["particles"]["rlnMicrographName"] == "0007").all()
    assert re.search(r"^000001@particles_0000\.mrcs\t0007\t", (tmp_path / "particles.star").read_text(), re.MULTILINE)
    np.testing.assert_array_equal(images, np.concatenate([batch(2, 4)[0], batch(3, 5)[0]]))
    assert_clean(tmp_path)


def test_append_skips_orphan_stack(tmp_path):
    """A stack left by a crash before its STAR was written is never overwritten."""
    with StackWriter(tmp_path, OPTICS) as writer:
        writer.write_batch(*batch(1, 6))
    (tmp_path / "particles_0001.mrcs").write_bytes(b"orphan")
    with StackWriter(tmp_path, OPTICS, append=True) as writer:
        assert writer.write_batch(*batch(1, 7)) == ["000001@particles_0002.mrcs"]
    assert (tmp_path / "particles_0001.mrcs").read_bytes() == b"orphan"


def test_append_refuses_other_optics(tmp_path):
    with StackWriter(tmp_path, OPTICS) as writer:
        writer.write_batch(*batch(1, 8))
    with pytest.raises(SimedError, match="rlnImageSize"):
        StackWriter(tmp_path, Optics(pixel_size_A=1.25, image_size_px=32), append=True)


def test_existing_star_without_append(tmp_path):
    with StackWriter(tmp_path, OPTICS) as writer:
        writer.write_batch(*batch(1, 9))
    with pytest.raises(SimedError, match="particles.star already exists"):
        StackWriter(tmp_path, OPTICS)


def test_unwritable_directory(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(SimedError, match="cannot write"):
        StackWriter(tmp_path / "afile" / "sub", OPTICS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SimedError, match="cannot write"):
            StackWriter(locked, OPTICS)
    finally:
        locked.chmod(0o700)


def test_bad_batches(tmp_path):
    writer = StackWriter(tmp_path, OPTICS)
    images, rows = batch(2, 10)
    with pytest.raises(ValueError, match=r"\(2, 16, 15\).*\(n, 16, 16\)"):
        writer.write_batch(images[:, :, :15], rows)
    with pytest.raises(ValueError, match="2 images but 1 rows"):
        writer.write_batch(images, rows[:1])
    with pytest.raises(ValueError, match="same keys"):
        writer.write_batch(images, [rows[0], {k: v for k, v in rows[1].items() if k != "coverage"}])
    assert not (tmp_path / "particles.star").exists() and writer.count == 0
    writer.write_batch(images, rows)
    with pytest.raises(ValueError, match="differ"):
        writer.write_batch(images, [dict(r, extra=1) for r in rows])
    assert writer.count == 2
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_batch(images, rows)


def test_column_names():
    assert column_name("scan_y") == "simedScanY"
    assert column_name("model_sha256") == "simedModelSha256"
    assert column_name("fourier_r") == "simedFourierR"
    assert column_name("rlnAngleRot") == "rlnAngleRot"
    with pytest.raises(ValueError):
        column_name("bad key")
