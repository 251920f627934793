"""Dataset-scale evaluation: worker processes and torchrun ranks give the same numbers
and the same mask files as one process; a corrupt image stops the run with one line and
no results file; Ctrl-C, SIGTERM and SIGKILL of the main process stop the workers; an image's prediction does not depend on the
images batched with it; progress off a terminal is plain lines."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import save_checkpoint
from deconvnet_ext.cli import main
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation
from deconvnet_ext.infer import InferenceConfig, predict_variants, proposal_boxes
from deconvnet_ext.pipeline import shard
from deconvnet_ext.progress import PlainProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]
NUM_VAL = 5
FAST = ["--max-proposals", "4", "--quiet"]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DECONVNET_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 5-image synthetic VOC val split (48x64) and untrained tiny checkpoints whose
    scores differ clearly between pixels (the score layer widened, as in test_infer)."""
    root = tmp_path_factory.mktemp("parallel")
    data = generate_synthetic_voc(root / "data", num_train=0, num_val=NUM_VAL,
                                  image_size=(48, 64), seed=3, progress=False)
    torch.manual_seed(0)
    deconvnet = dx.DeconvNet(num_classes=21, arch="tiny").eval()
    with torch.no_grad():
        deconvnet.score.weight.mul_(300.0)
        deconvnet.score.bias.mul_(300.0)
    save_checkpoint(root / "deconvnet.pt", deconvnet)
    torch.manual_seed(1)
    fcn = dx.FCN8s(num_classes=21, arch="tiny").eval()
    with torch.no_grad():
        for p in fcn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(root / "fcn8s.pt", fcn)
    return {"root": root, "data": data, "deconvnet": deconvnet, "fcn": fcn,
            "models": ["--checkpoint", str(root / "deconvnet.pt"),
                       "--fcn-checkpoint", str(root / "fcn8s.pt")]}


def _numbers(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {k: results[k] for k in ("num_images", "class_names", "variants")}


def _files(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*.png"))}


def test_workers_and_ranks_give_identical_numbers_and_masks(tiny, tmp_path):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        assert main(["eval", "--data", str(tiny["data"]), *tiny["models"], *FAST,
                     "--workers", str(workers), "--out", str(out), "--masks"]) == 0
        runs[f"workers {workers}"] = out
    # two gloo ranks (each with two workers), the split interleaved between them
    out = tmp_path / "ranks2"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "deconvnet_ext", "eval", "--data", str(tiny["data"]), *tiny["models"],
         *FAST, "--workers", "2", "--out", str(out), "--masks"],
        env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs["2 ranks"] = out

    reference = runs.pop("workers 1")
    numbers, masks = _numbers(reference), _files(reference / "masks")
    assert numbers["num_images"] == NUM_VAL and len(numbers["variants"]) == 5
    assert len(masks) == 5 * NUM_VAL  # every variant's mask of every image
    for name, out in runs.items():
        assert _numbers(out) == numbers, name
        assert _files(out / "masks") == masks, name
    # throughput: images/s and the seconds of every stage
    throughput = json.loads((runs["2 ranks"] / "results.json").read_text())["throughput"]
    assert throughput["ranks"] == 2 and throughput["workers"] == 2
    assert throughput["images_per_s"] > 0
    assert set(throughput["stage_seconds_summed"]) == {"decode", "proposals", "network",
                                                       "aggregation", "crf"}

    # predict: the same masks with and without workers
    images = sorted((tiny["data"] / "JPEGImages").glob("*.jpg"))[:3]
    predicted = []
    for workers in (1, 2):
        out = tmp_path / f"predict{workers}"
        assert main(["predict", *map(str, images), *tiny["models"], "--crf", *FAST,
                     "--workers", str(workers), "--out", str(out)]) == 0
        predicted.append(_files(out))
    assert len(predicted[0]) == 3 and predicted[0] == predicted[1]


def test_prediction_does_not_depend_on_the_images_batched_with_it(tiny):
    val = VOCSegmentation(tiny["data"], "val")
    images = [val[i].image for i in range(3)]
    config = InferenceConfig(max_proposals=4, batch_size=3)  # chunks within an image
    boxes = [proposal_boxes(image, config) for image in images]
    alone = predict_variants(images[1:2], tiny["deconvnet"], tiny["fcn"], config,
                             use_crf=False, boxes=boxes[1:2])[0]
    together = predict_variants(images, tiny["deconvnet"], tiny["fcn"], config,
                                use_crf=False, boxes=boxes)[1]
    assert list(alone) == ["FCN-8s", "DeconvNet", "EDeconvNet"]
    for variant in alone:
        assert np.array_equal(alone[variant], together[variant]), variant


def test_a_corrupt_image_stops_the_run_with_one_line_and_no_results(tiny, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    bad = data / "JPEGImages" / "synth_val_000003.jpg"
    bad.write_bytes(b"this is not a JPEG")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "deconvnet_ext", "eval", "--data", str(data), *tiny["models"],
         *FAST, "--workers", "2", "--out", str(out), "--masks"],
        env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], proc.stderr
    assert not (out / "results.json").exists() and not (out / "results.md").exists()


def _session_processes(session: int) -> dict:
    """{pid: parent pid} of the live (not zombie) processes of process group ``session``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == session and fields[0] != "Z":
            found[int(entry.name)] = int(fields[1])
    return found


# How each way of stopping the main process must end: (signal, sent to the whole
# process group?, exit code, its one stderr line). Ctrl-C reaches the whole group, as
# a terminal sends it; `kill` and job schedulers send SIGTERM to the main process only;
# SIGKILL (the OOM killer) leaves no chance to clean up: the fork server leaves with
# its parent and the workers with theirs (PR_SET_PDEATHSIG), even mid-task.
STOPS = {
    "ctrl-c": (signal.SIGINT, True, 130, "deconvnet eval: interrupted"),
    "sigterm": (signal.SIGTERM, False, 143, "deconvnet eval: terminated"),
    "sigkill": (signal.SIGKILL, False, -signal.SIGKILL, None),
}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("stop", sorted(STOPS))
def test_stopping_the_run_stops_the_workers(tiny, tmp_path, stop):
    signum, to_group, code, line = STOPS[stop]
    out = tmp_path / "out"
    # thousands of CRF iterations: the run lasts far longer than the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "deconvnet_ext", "eval", "--data", str(tiny["data"]),
         *tiny["models"], *FAST, "--workers", "2", "--crf-iterations", "20000",
         "--out", str(out)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's job
        # and Ctrl-C at its default, as a shell gives a job: an "ignore SIGINT" left in
        # this pytest process by an earlier test would be inherited through exec, and
        # the run would then rightly ignore the Ctrl-C and never stop
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while True:  # the workers: grandchildren (the fork server's children)
            group = _session_processes(proc.pid)
            if sum(parent in group and parent != proc.pid for parent in group.values()) >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        time.sleep(1.0)
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        proc.wait(timeout=120)  # generous: a loaded CI machine
        # the fork server leaves when its parent has gone, and the workers with it
        deadline = time.monotonic() + 30
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_processes(proc.pid) == {}
        _, stderr = proc.communicate(timeout=30)  # EOF once no process holds the pipes
        assert proc.returncode == code, stderr
        if line is not None:
            assert "Traceback" not in stderr and stderr.strip().splitlines() == [line], stderr
        assert not (out / "results.json").exists()
    finally:
        for pid in _session_processes(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shards_cover_the_split_once():
    for total in (0, 1, 5, 8):
        for world in (1, 2, 3):
            got = sorted(i for rank in range(world) for i in shard(total, rank, world))
            assert got == list(range(total))


def test_progress_off_a_terminal_is_plain_lines():
    stream = io.StringIO()  # not a TTY
    bar = progress_bar(total=4, desc="evaluate", unit="img", file=stream)
    assert isinstance(bar, PlainProgress)
    bar.interval_s = 0.0  # a line on every update
    for _ in range(4):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("evaluate: 4/4 img (100%)")
    assert "loss=0.5" in lines[-1]
    # iteration, and silence when disabled
    quiet = io.StringIO()
    assert list(progress_bar(range(3), file=quiet, disable=True)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    plain = io.StringIO()
    assert list(progress_bar(range(3), desc="synth", file=plain)) == [0, 1, 2]
    assert plain.getvalue().splitlines() == [plain.getvalue().splitlines()[-1]]
    assert plain.getvalue().startswith("synth: 3/3 it (100%)")


def _own_niceness(state):
    return os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize("setting", [None, "0", "3"])
def test_workers_run_below_the_main_process(setting, monkeypatch):
    from deconvnet_ext import parallel
    if setting is None:
        monkeypatch.delenv("DECONVNET_WORKER_NICE", raising=False)
    else:
        monkeypatch.setenv("DECONVNET_WORKER_NICE", setting)
    wanted = parallel.WORKER_NICENESS if setting is None else int(setting)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    with parallel.WorkerPool(1) as pool:
        pool.submit(_own_niceness)
        _, theirs = pool.next_result()
    assert theirs == min(19, mine + wanted)


def test_worker_context_does_not_fork_by_default(monkeypatch):
    """The pools and the trainer's DataLoader workers start by forkserver (spawn where
    there is none), never by fork, unless DECONVNET_START_METHOD or the caller says so."""
    from deconvnet_ext.parallel import worker_context
    monkeypatch.delenv("DECONVNET_START_METHOD", raising=False)
    assert worker_context().get_start_method() in ("forkserver", "spawn")
    assert worker_context("spawn").get_start_method() == "spawn"
    monkeypatch.setenv("DECONVNET_START_METHOD", "spawn")
    assert worker_context().get_start_method() == "spawn"
