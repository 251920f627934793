import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deconvnet_ext.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DECONVNET_DEBUG", None)
    return env


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deconvnet_ext", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)


def test_module_help_lists_every_subcommand():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: deconvnet {name}")


def test_bad_path_is_one_line_exit_2_in_a_real_process(tmp_path):
    proc = _run("predict", str(tmp_path / "missing.jpg"), "--checkpoint", "nope.pt")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.jpg" in lines[0], proc.stderr


def _one_line_error(capsys, argv):
    capsys.readouterr()  # drop what earlier commands printed
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    return err[0]


def test_user_errors_are_one_line(tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    # missing checkpoint
    line = _one_line_error(capsys, ["predict", str(image), "--checkpoint",
                                    str(tmp_path / "none.pt")])
    assert "none.pt" in line
    # a file that is not a checkpoint
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "junk.pt" in _one_line_error(capsys, ["predict", str(image), "--checkpoint", str(junk)])
    # dataset directory missing, or not in the VOC layout
    assert "nowhere" in _one_line_error(capsys, ["eval", "--data", str(tmp_path / "nowhere"),
                                                 "--checkpoint", str(junk)])
    assert str(tmp_path) in _one_line_error(capsys, ["eval", "--data", str(tmp_path),
                                                     "--checkpoint", str(junk)])
    # a bad option value
    assert "max_proposals" in _one_line_error(
        capsys, ["predict", str(image), "--checkpoint", str(junk), "--max-proposals", "0"])
    assert "--stage1-decay-at" in _one_line_error(
        capsys, ["demo", "--quick", "--out", str(tmp_path / "d"), "--stage1-decay-at", "0"])


def test_demo_defaults_are_the_measured_recipe():
    """`deconvnet demo` with no options runs the recipe its comments measure: the demo's
    own proposal count, minimum size and top-5 aggregation, stage-2 background crops 1
    per positive, and inference crops at the training crops' context (the library's
    default)."""
    from deconvnet_ext import demo
    from deconvnet_ext.cli import build_parser
    from deconvnet_ext.data.crop_geometry import TRAINING_CROP_CONTEXT
    from deconvnet_ext.infer import InferenceConfig, inference_config_from_args
    args = build_parser("demo").parse_args(["demo"])
    config = inference_config_from_args(args)
    assert (config.max_proposals, config.min_size) == (200, 0)
    assert (config.aggregation, config.topk) == (demo.DEMO_AGGREGATION, 5) == ("topk", 5)
    assert config.context == InferenceConfig().context == TRAINING_CROP_CONTEXT
    assert abs(TRAINING_CROP_CONTEXT - 1.2 * 224 / 250) < 1e-12
    assert args.stage2_negatives == demo.DEMO_STAGE2_NEGATIVES == 1.0
    sizes = demo._sizes(args)
    assert (sizes["stage1_steps"], sizes["stage2_steps"], sizes["fcn_steps"]) == (4000, 1500, 1500)


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_generated_dataset(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--max-proposals", "4"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    variants = results["variants"]
    # the demo's own min size, the library's context (see deconvnet_ext/demo.py)
    from deconvnet_ext import demo
    from deconvnet_ext.infer import InferenceConfig
    assert results["config"]["context"] == InferenceConfig().context
    assert results["config"]["min_size"] == demo.DEMO_MIN_SIZE
    assert list(variants) == ["FCN-8s", "DeconvNet", "DeconvNet+CRF", "EDeconvNet",
                              "EDeconvNet+CRF"]
    for summary in variants.values():
        assert 0.0 <= summary["mean_iou"] <= 1.0
        assert len(summary["per_class_iou"]) == 21
    assert "| EDeconvNet+CRF |" in printed and "| EDeconvNet+CRF |" in (
        out / "results.md").read_text()
    assert (out / "overlay_grid.png").is_file()
    # the diagnostics say where the points go: oracle boxes, recall by size, crops, training
    diag = results["diagnostics"]
    assert {"oracle_boxes_mean_iu", "perfect_scorer_mean_iu", "best_proposal_mean_iu",
            "crop_mean_iu", "recall"} <= set(diag)
    assert "Where the points go" in (out / "results.md").read_text()
    assert "ground-truth boxes (oracle)" in printed and "| deconvnet_stage1 |" in printed
    assert "each object's best proposal only" in printed
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == results["num_images"] > 0

    # the checkpoints the demo trained drive `eval` and `predict`
    ckpt = out / "checkpoints"
    deconv, fcn = ckpt / "deconvnet.pt", ckpt / "fcn8s.pt"
    assert main(["eval", "--data", str(out / "data"), "--checkpoint", str(deconv),
                 "--fcn-checkpoint", str(fcn), "--limit", "2", "--max-proposals", "4",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["num_images"] == 2 and "EDeconvNet+CRF" in evaluated["variants"]

    images = sorted((out / "data" / "JPEGImages").glob("*.jpg"))[:2]
    pred_dir = tmp_path / "pred"
    assert main(["predict", *map(str, images), "--checkpoint", str(deconv),
                 "--fcn-checkpoint", str(fcn), "--crf", "--max-proposals", "4",
                 "--out", str(pred_dir), "--overlay"]) == 0
    for image in images:
        mask = np.array(Image.open(pred_dir / f"{image.stem}.png"))
        assert mask.shape == np.array(Image.open(image)).shape[:2]
        assert mask.max() < 21
        assert (pred_dir / f"{image.stem}_overlay.png").is_file()
    # an FCN-8s checkpoint given as the DeconvNet is refused, naming the file
    line = _one_line_error(capsys, ["predict", str(images[0]), "--checkpoint", str(fcn)])
    assert "fcn8s.pt" in line
