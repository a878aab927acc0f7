"""`otpserve train` and `otpserve predict` as a person uses them."""

import json

import numpy as np
import pytest
from otpserve.cli import main
from PIL import Image
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`otpserve train` with defaults only, OTPSERVE_HOME pointed at a temp folder."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTPSERVE_HOME", str(home))
        assert main(["train", "--quiet"]) == 0
    return home / "models" / "mlp"


def test_train_without_out_writes_the_default_artifact_location(trained):
    assert (trained / "manifest.json").is_file() and (trained / "model.safetensors").is_file()


def test_train_prints_split_and_held_out_accuracy(tmp_path, capsys):
    assert main(["train", "--quiet", "--epochs", "2", "--seed", "5", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "1437 train / 360 held-out" in out
    assert "held-out accuracy: " in out and f"saved: {tmp_path / 'm'}" in out
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["training"]["epochs"] == 2 and manifest["training"]["seed"] == 5


def test_train_shows_one_progress_bar_for_the_run_with_the_epoch_and_loss_on_it(tmp_path, capsys):
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "epoch=1/2" in err and "epoch=2/2" in err and "loss=" in err
    assert len([line for line in err.split("\n") if line.strip()]) == 1, err  # redrawn in place: one line
    assert err.rstrip().split("\r")[-1].startswith("training: 100%"), err


def digit_pixels(index: int) -> tuple[np.ndarray, int]:
    """A real scanned digit as 8-bit pixels (0-16 scaled to 0-255), and its label."""
    digits = load_digits()
    return (digits.images[index] * (255 / 16)).round().astype(np.uint8), int(digits.target[index])


def test_predict_prints_the_class_of_a_npy_array(trained, tmp_path, capsys):
    pixels, label = digit_pixels(0)
    np.save(tmp_path / "digit.npy", pixels)
    assert main(["predict", str(trained), str(tmp_path / "digit.npy")]) == 0
    assert capsys.readouterr().out.strip() == str(label)


def test_predict_prints_the_class_of_a_png_image(trained, tmp_path, capsys):
    pixels, label = digit_pixels(1)
    big = Image.fromarray(pixels).resize((28, 28), Image.Resampling.BILINEAR)
    big.save(tmp_path / "digit.png")
    assert main(["predict", str(trained), str(tmp_path / "digit.png")]) == 0
    assert capsys.readouterr().out.strip() == str(label)


def test_predict_inverts_dark_ink_on_white_when_asked(trained, tmp_path, capsys):
    pixels, label = digit_pixels(2)
    Image.fromarray(255 - pixels).save(tmp_path / "paper.png")
    assert main(["predict", "--invert", str(trained), str(tmp_path / "paper.png")]) == 0
    assert capsys.readouterr().out.strip() == str(label)


def test_predict_prints_one_class_per_image_and_top_k(trained, tmp_path, capsys):
    rows = np.stack([digit_pixels(i)[0] for i in range(3)])
    np.save(tmp_path / "three.npy", rows)
    assert main(["predict", "--top", "2", str(trained), str(tmp_path / "three.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(digit_pixels(i)[1]) for i in range(3)]
    assert all(len(line.split("\t")[1].split()) == 2 for line in lines)


def test_predict_with_a_damaged_model_prints_one_clear_line(trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((trained / "manifest.json").read_text())
    (broken / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes()[:1000])
    np.save(tmp_path / "x.npy", np.zeros(784, np.float32))
    assert main(["predict", str(broken), str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("otpserve predict: error: ") and "model.safetensors" in err and "truncated" in err
    assert "Traceback" not in err


def test_predict_with_no_model_says_how_to_make_one(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros(784, np.float32))
    assert main(["predict", str(tmp_path / "none"), str(tmp_path / "x.npy")]) == 1
    assert "otpserve train" in capsys.readouterr().err


def test_predict_on_an_unreadable_array_shape_is_a_clear_error(trained, tmp_path, capsys):
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2, 2), np.float32))
    assert main(["predict", str(trained), str(tmp_path / "cube.npy")]) == 1
    assert "cube.npy" in capsys.readouterr().err
