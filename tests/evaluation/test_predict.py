"""predict.py: --gradcam and --explain occlusion|lime on every kind of saved classifier (flat
CNN, nested backbone, nested SimCLR encoder), one overlay per image, where the maps come from
the model's Grad-CAM, occlusion or LIME; names that never collide (overlays, prediction rows),
a validated --threshold and one-line refusals of bad --explain flags."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, run_tool
from PIL import Image

from bc_keras import cli, models
from bc_keras.data.decode import decode_and_resize
from bc_keras.evaluation import gradcam, inference
from bc_keras.models import simclr, transfer
from bc_keras.models.resnet import build_resnet18

predict = load_script("predict")
SIZE = 32


def _builders():
    return {
        "cnn": lambda: models.build_baseline_cnn(SIZE, dense_units=4),
        "mobilenet": lambda: transfer.build_transfer_model(
            "mobilenet", SIZE, weights=None, alpha=0.25
        ),
        "simclr": lambda: simclr.build_classifier(build_resnet18(SIZE), SIZE),
    }


@pytest.mark.parametrize("kind", ["cnn", "mobilenet", "simclr"])
def test_gradcam_overlays_for_every_classifier(kind, tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = _builders()[kind]()
    metadata = {"kind": "classifier", "image_size": SIZE, "preprocess": "rescale",
                "interpolation": "nearest", "threshold": 0.5}  # fmt: skip
    path = models.save_model(model, tmp_path / f"{kind}.h5", metadata)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    names = [f"SOB_M_DC-14-2523-40-{index:03d}.png" for index in range(1, 4)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (46, 70, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "cams"
    argv = [str(path), str(images), "--out", str(tmp_path / "p.csv"), "--gradcam", str(out)]
    assert cli.run_script(predict.main, argv) == 0
    assert "wrote 3 Grad-CAM overlays" in capsys.readouterr().out
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == sorted(n.replace(".png", "_gradcam.png") for n in names)
    # Each overlay is the model-sized image under its Grad-CAM map (a batch of 3 and one of 1
    # round the last bits of the map differently).
    loaded, _ = models.load_model(path)
    first = decode_and_resize(str(images / names[0]), SIZE, "nearest").numpy()
    heatmap = gradcam.gradcam(loaded, first[None].astype("float32") / 255.0)[0]
    expected = gradcam.overlay(first, heatmap)
    with Image.open(written[0]) as image:
        difference = np.abs(np.asarray(image).astype(int) - expected.astype(int))
        assert difference.max() <= 3 and difference.mean() < 0.1


@pytest.mark.parametrize("value", ["2", "-1", "nan", "0", "1", "youden", "inf"])
def test_threshold_must_be_a_probability(value, capsys):
    with pytest.raises(SystemExit) as stop:
        predict.parse_args(["model.h5", "images", "--threshold", value])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument --threshold: must be a probability in (0, 1), e.g. 0.5, got {value}" in error
    assert predict.parse_args(["m.h5", "i", "--threshold", "0.3"]).threshold == 0.3


def test_overlays_of_inputs_sharing_a_name_never_replace_each_other(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    metadata = {"kind": "classifier", "image_size": SIZE, "preprocess": "rescale",
                "interpolation": "nearest", "threshold": 0.5}  # fmt: skip
    path = models.save_model(_builders()["cnn"](), tmp_path / "cnn.h5", metadata)
    rng = np.random.default_rng(2)
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "b" / "x.jpg",
              tmp_path / "b" / "y.png"]  # fmt: skip
    for image in inputs:
        image.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "cams"
    argv = [str(path), *map(str, inputs[:3]), str(inputs[3]), "--out", str(tmp_path / "p.csv"),
            "--gradcam", str(out)]  # fmt: skip
    assert cli.run_script(predict.main, argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 Grad-CAM overlays" in printed
    assert "note: 3 images share a file name with another input" in printed
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 4 and "y_gradcam.png" in names
    hashed = [name for name in names if name.startswith("x_")]
    assert len(hashed) == 3 and all(len(name) == len("x_12345678_gradcam.png") for name in hashed)
    # Each overlay is its own input's (every input holds other random pixels).
    overlays = {name: np.asarray(Image.open(out / name)) for name in hashed}
    assert len({array.tobytes() for array in overlays.values()}) == 3
    names_again, disambiguated = inference.overlay_names(list(map(str, inputs)))
    assert disambiguated == 3 and sorted(names_again) == names
    with open(out / inference.OVERLAY_INDEX, newline="") as file:
        index = {row["path"]: row["overlay"] for row in csv.DictReader(file)}
    assert index == dict(zip(map(str, inputs), names_again, strict=True))


def _cnn_file(tmp_path):
    keras.utils.set_random_seed(0)
    metadata = {"kind": "classifier", "image_size": SIZE, "preprocess": "rescale",
                "interpolation": "nearest", "threshold": 0.5}  # fmt: skip
    return models.save_model(_builders()["cnn"](), tmp_path / "cnn.h5", metadata)


def test_an_image_named_twice_is_one_row_and_one_overlay(tmp_path, capsys):
    path = _cnn_file(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    again = tmp_path / "images" / ".." / "images" / "a.png"  # the same file, spelt otherwise
    argv = [path, folder, folder / "a.png", again, "--out", tmp_path / "p.csv",
            "--gradcam", tmp_path / "cams"]  # fmt: skip
    code, out, err = run_tool(predict, argv, capsys)
    assert code == 0, err
    assert "warning: 2 image(s) were named more than once (e.g. " in err
    assert "predicting 2 image(s)" in out and "wrote 2 Grad-CAM overlays" in out
    with open(tmp_path / "p.csv", newline="") as file:
        paths = [row["path"] for row in csv.DictReader(file)]
    assert paths == [str(folder / "a.png"), str(folder / "b.png")]
    overlays = sorted(p.name for p in (tmp_path / "cams").glob("*.png"))
    assert overlays == ["a_gradcam.png", "b_gradcam.png"]


def test_two_links_to_one_image_are_two_inputs_with_their_own_overlays(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").symlink_to(image)
    links = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")]
    files, repeated = inference.collect_images(links)
    assert files == links and repeated == []
    names, disambiguated = inference.overlay_names(files)
    assert disambiguated == 2 and len(set(names)) == 2


def test_overlay_names_stay_unique_when_a_hash_name_is_taken():
    first = inference.overlay_names(["/a/x.png", "/b/x.png"])[0][0]  # x_<hash>_gradcam.png
    taken_stem = first.removesuffix("_gradcam.png")
    names, _ = inference.overlay_names(["/a/x.png", "/b/x.png", f"/c/{taken_stem}.png"])
    assert len({name.lower() for name in names}) == 3 and names[2] == first
    assert names[0] == f"{taken_stem}-2_gradcam.png"


def test_a_gradcam_path_that_is_a_file_is_refused_before_predicting(tmp_path, capsys):
    taken = tmp_path / "cams"
    taken.write_text("not a folder")
    argv = [tmp_path / "missing.h5", tmp_path, "--out", tmp_path / "p.csv", "--gradcam", taken]
    code, out, err = run_tool(predict, argv, capsys)
    assert_one_line_error(code, err, f"--gradcam {taken} is a file; name a folder")
    assert out == "" and not (tmp_path / "p.csv").exists()


def _three_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(4)
    names = [f"SOB_B_A-14-22549AB-40-{index:03d}.png" for index in range(1, 4)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(images / name)
    return images, names


@pytest.mark.parametrize("kind", ["cnn", "mobilenet", "simclr"])
def test_occlusion_and_lime_overlays_for_every_classifier(kind, tmp_path, capsys, request):
    from bc_keras.evaluation import explain

    keras.utils.set_random_seed(0)
    metadata = {"kind": "classifier", "image_size": SIZE, "preprocess": "rescale",
                "interpolation": "nearest", "threshold": 0.5}  # fmt: skip
    if kind == "mobilenet":  # random MobileNet features vanish at 32 px: every map would be 0
        weights = request.getfixturevalue("mobilenet_weights")
        model = transfer.build_transfer_model("mobilenet", SIZE, weights=weights, alpha=0.25)
    else:
        model = _builders()[kind]()
    path = models.save_model(model, tmp_path / f"{kind}.h5", metadata)
    images, names = _three_images(tmp_path)
    argv = [path, images, "--out", tmp_path / "p.csv", "--explain", "occlusion", tmp_path / "occ",
            "--explain", "lime", tmp_path / "lime", "--lime-samples", "24", "--seed", "5",
            "--occlusion-patch", "8"]  # fmt: skip
    code, out, err = run_tool(predict, argv, capsys)
    assert code == 0, err
    assert "wrote 3 occlusion overlays" in out and "wrote 3 LIME overlays" in out
    loaded, _ = models.load_model(path)
    shown = np.stack([decode_and_resize(str(images / n), SIZE, "nearest").numpy() for n in names])
    inputs = shown.astype("float32") / 255.0
    for method, options in (("occlusion", {"patch_size": 8}), ("lime", {"num_samples": 24})):
        folder = tmp_path / ("occ" if method == "occlusion" else "lime")
        with open(folder / f"{method}.csv", newline="") as file:
            index = {row["path"]: row["overlay"] for row in csv.DictReader(file)}
        expected_names = [n.replace(".png", f"_{method}.png") for n in names]
        assert index == dict(zip([str(images / n) for n in names], expected_names, strict=True))
        # Each overlay is the model-sized image under the method's map, LIME seeded by --seed.
        maps = explain.explain(loaded, inputs, method, shown, seed=5, **options)
        assert maps.max() == 1.0  # not an empty map compared with an empty overlay
        for image, heatmap, name in zip(shown, maps, expected_names, strict=True):
            written = np.asarray(Image.open(folder / name)).astype(int)
            difference = np.abs(written - gradcam.overlay(image, heatmap).astype(int))
            assert difference.max() <= 3 and difference.mean() < 0.1


def test_explain_gradcam_is_the_gradcam_flag_and_lime_follows_the_seed(tmp_path, capsys):
    path = _cnn_file(tmp_path)
    images, names = _three_images(tmp_path)
    lime = ["--lime-samples", "12", "--explain", "lime"]
    for flags in (["--gradcam", tmp_path / "a", *lime, tmp_path / "s1", "--seed", "1"],
                  ["--explain", "gradcam", tmp_path / "b", *lime, tmp_path / "s3", "--seed", "1"],
                  [*lime, tmp_path / "s2", "--seed", "2"]):  # fmt: skip
        argv = [path, images, "--out", tmp_path / "p.csv", *flags]
        code, out, err = run_tool(predict, argv, capsys)
        assert code == 0, err

    def overlays(folder, suffix):
        return [(tmp_path / folder / n.replace(".png", suffix)).read_bytes() for n in names]

    assert overlays("a", "_gradcam.png") == overlays("b", "_gradcam.png")
    assert (tmp_path / "b" / inference.OVERLAY_INDEX).is_file()
    assert overlays("s1", "_lime.png") == overlays("s3", "_lime.png")
    assert overlays("s1", "_lime.png") != overlays("s2", "_lime.png")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--explain", "shap", "{tmp}/x"],
         "--explain shap: unknown method; choose one of gradcam, occlusion, lime"),
        (["--explain", "lime", "{tmp}/taken"], "--explain lime {tmp}/taken is a file; name a folder"),
        (["--explain", "occlusion", "{tmp}/a", "--explain", "occlusion", "{tmp}/b"],
         "--explain occlusion is asked for twice; give each method one folder"),
        (["--gradcam", "{tmp}/a", "--explain", "gradcam", "{tmp}/b"],
         "--explain gradcam is asked for twice"),
        (["--explain", "lime", "{tmp}/a", "--lime-samples", "1"],
         "--lime-samples must be at least 2"),
        (["--explain", "occlusion", "{tmp}/a", "--occlusion-patch", "33"],
         "--occlusion-patch 33 is larger than the model's 32 px input; give at most 32"),
    ],
)  # fmt: skip
def test_bad_explain_flags_are_refused_in_one_line_before_predicting(
    flags, message, tmp_path, capsys
):
    path = _cnn_file(tmp_path)
    images, _ = _three_images(tmp_path)
    (tmp_path / "taken").write_text("not a folder")
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    code, out, err = run_tool(predict, [path, images, "--out", tmp_path / "p.csv", *flags], capsys)
    assert_one_line_error(code, err, message.format(tmp=tmp_path))
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "a").exists()
