"""benchmarks/gpu_check.sh and its helpers, on a machine without a GPU: the script
prints one line and exits 0; the sanitizer script and the benchmark script run their
code on the CPU (a smoke run, so the GPU machine's one run does not find a Python
error); the summary writer turns a benchmark JSON into the markdown + JSON summary."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def env_for_child(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run")
def test_without_a_gpu_it_prints_one_line_and_exits_0(tmp_path):
    done = subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), str(tmp_path / "out")],
                          env=env_for_child(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stdout
    assert not (tmp_path / "out").exists()


def test_sanitize_script_runs_on_cpu():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_sanitize.py"), "--device",
                           "cpu", "--quick"], env=env_for_child(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.slow
def test_bench_script_and_summary_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_bench.json"
    done = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_bench.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], env=env_for_child(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert set(bench["sections"]) == {"copy_bandwidth", "pool_unpool", "aggregate", "train_step"}
    assert all("result" in s for s in bench["sections"].values()), bench["sections"]
    rows = bench["sections"]["pool_unpool"]["result"]
    assert {r["op"] for r in rows} == {"pool_forward", "pool_backward", "unpool_forward",
                                       "unpool_backward"}
    assert all(len(r["ratios"]) == 3 for r in rows)
    status = tmp_path / "sections.tsv"
    status.write_text("build\t0\t60\ncuda_tests\t1\t30\nmemcheck\tskipped\t0\nbenchmarks\t0\t90\n")
    done = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_summary.py"), str(tmp_path),
                           str(status), "Test GPU", "200"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1  # cuda_tests failed
    md = (tmp_path / "gpu_check.md").read_text()
    assert "# GPU check: Test GPU" in md and "| cuda_tests | failed (1) | 30 |" in md
    assert "pool_forward" in md and "aggregate_proposals" in md and "train step" in md
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "Test GPU" and len(summary["sections"]) == 4
