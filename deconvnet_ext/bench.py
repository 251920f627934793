"""`deconvnet bench`: run the benchmark suite (benchmarks/, pytest-benchmark) and
write what it measured as benchmarks/RESULTS.md (a table of ratios, the machine and
device named) and benchmarks/results.png (a bar chart).

The benchmarks themselves live in benchmarks/test_*.py (one definition each, also run
by `pytest benchmarks/`); this module only runs them through pytest.main with
--benchmark-json and turns that JSON into the report. `--report-only JSON` rewrites
the report from a saved JSON without measuring again.

Ratios use each contender's fastest round (min): on a shared machine other processes
only ever add time, so the min is the least disturbed estimate of what the code costs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import UserError

# Run settings: quick (default) keeps `deconvnet bench` to a few minutes on 2 cores.
PRESETS = {
    "quick": {"shapes": "quick", "max_time": 0.3, "min_rounds": 5},
    "full": {"shapes": "full", "max_time": 1.0, "min_rounds": 5},
}
RIVALS = (("torch", "torch eager"), ("torch_compile", "torch.compile"), ("reference", "reference.py"))
OP_TITLES = {
    "pool_forward": "pool forward",
    "pool_forward_backward": "pool forward+backward",
    "unpool_forward": "unpool forward",
    "unpool_backward": "unpool backward",
    "aggregate_proposals": "aggregation (max)",
    "train_step": "DeconvNet train step",
    "proposal_inference": "proposal inference, 1 image",
}
HEADLINE_POOL = "cpu-float32-nchw-16x64x112x112"
HEADLINE_POOL_CL = "cpu-float32-cl-16x64x112x112"
HEADLINE_AGG = "cpu-float32-K50-C21-224x224-into-375x500"


# --------------------------------------------------------------------------- running
def find_benchmarks_dir(explicit: Optional[Path] = None) -> Path:
    """The suite's directory: `explicit`, else benchmarks/ next to the package (a
    source checkout), else ./benchmarks."""
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parent.parent / "benchmarks", Path.cwd() / "benchmarks"]
    for path in candidates:
        if (path / "conftest.py").is_file() and (path / "harness.py").is_file():
            return path
    raise UserError("cannot find the benchmark suite (a benchmarks/ folder with conftest.py and "
                    f"harness.py); looked in {', '.join(str(p) for p in candidates)}. "
                    "Run from a source checkout or pass --benchmarks-dir")


def run_suite(bench_dir: Path, json_path: Path, preset: str, keyword: Optional[str] = None,
              max_time: Optional[float] = None, min_rounds: Optional[int] = None) -> int:
    """pytest.main on the suite, timings into json_path. Returns pytest's exit code."""
    import pytest
    settings = dict(PRESETS[preset])
    if max_time is not None:
        settings["max_time"] = max_time
    if min_rounds is not None:
        settings["min_rounds"] = min_rounds
    args = [str(bench_dir), "-q", "-p", "no:cacheprovider",
            f"--bench-shapes={settings['shapes']}",
            f"--benchmark-json={json_path}",
            f"--benchmark-max-time={settings['max_time']}",
            f"--benchmark-min-rounds={settings['min_rounds']}",
            "--benchmark-columns=min,median,rounds", "--benchmark-sort=name"]
    if keyword:
        args += ["-k", keyword]
    return int(pytest.main(args))


# --------------------------------------------------------------------------- reading
def load_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read benchmark JSON {str(path)!r}: {exc}") from None


def group_rows(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per benchmark group (one op on one case): each contender's min and
    median seconds, and the ratios the report shows."""
    groups: Dict[str, Dict[str, Any]] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        row = groups.setdefault(bench["group"], {"group": bench["group"], "op": info["op"],
                                                 "case": info["case"], "device": info.get("device"),
                                                 "times": {}, "medians": {}})
        row["times"][info["contender"]] = bench["stats"]["min"]
        row["medians"][info["contender"]] = bench["stats"]["median"]
    rows = list(groups.values())
    for row in rows:
        for times, ratios, floor in ((row["times"], "ratios", "floor_ratio"),
                                     (row["medians"], "median_ratios", "median_floor_ratio")):
            ours = times.get("ours")
            if row["op"] == "aggregate_proposals" and "reference" in times:
                times.setdefault("torch", times["reference"])   # plain PyTorch *is* the reference loop
            row[ratios] = {name: (times[name] / ours if ours and name in times else None)
                           for name, _ in RIVALS}
            floors = [times[k] for k in ("floor", "floor_memcpy") if times.get(k)]
            row[floor] = ours / min(floors) if ours and floors else None
    # By op, then in the order the suite ran the cases (NCHW before channels_last,
    # the shape list's order).
    order = list(OP_TITLES)
    rows.sort(key=lambda r: order.index(r["op"]) if r["op"] in order else len(order))
    return rows


def records(data: Dict[str, Any], kind: str) -> List[Dict[str, Any]]:
    return [r for r in data.get("deconvnet_ext", {}).get("records", []) if r.get("kind") == kind]


# --------------------------------------------------------------------------- writing
def _x(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}x"


def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _mib(nbytes: Optional[float]) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def _find(rows: List[Dict[str, Any]], op: str, case: str) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if r["op"] == op and r["case"] == case), None)


def target_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """Issue 6's targets (CUDA ones when a GPU was measured), each with the measured
    ratio and met / missed."""
    def line(text, row, rival, goal, higher_is_better=True):
        if row is None or (rival or "floor") not in row["times"] or "ours" not in row["times"]:
            return f"| {text} | not measured | — | — |"
        value = row["ratios"][rival] if rival else row["floor_ratio"]
        median = row["median_ratios"][rival] if rival else row["median_floor_ratio"]
        ok = value >= goal if higher_is_better else value <= goal
        return f"| {text} | {_x(value)} | {_x(median)} | {'met' if ok else 'MISSED'} |"

    pool = _find(rows, "pool_forward", HEADLINE_POOL)
    unpool = _find(rows, "unpool_forward", HEADLINE_POOL)
    cuda = [] if not any(r["device"] == "cuda" for r in rows) else [
        line("CUDA pool forward (16,64,112,112) float32 >= 1.5x torch",
             _find(rows, "pool_forward", "cuda" + HEADLINE_POOL[3:]), "torch", 1.5),
        line("CUDA pool forward at >= 70% of the copy bandwidth (ours / floor <= 1.43)",
             _find(rows, "pool_forward", "cuda" + HEADLINE_POOL[3:]), None, 1 / 0.7, higher_is_better=False),
        line("CUDA unpool (16,64,112,112) float32 >= 1.5x torch",
             _find(rows, "unpool_forward", "cuda" + HEADLINE_POOL[3:]), "torch", 1.5),
        line("CUDA unpool at >= 70% of the copy bandwidth (ours / floor <= 1.43)",
             _find(rows, "unpool_forward", "cuda" + HEADLINE_POOL[3:]), None, 1 / 0.7, higher_is_better=False),
        line("CUDA aggregation >= 20x the loop",
             _find(rows, "aggregate_proposals", "cuda" + HEADLINE_AGG[3:]), "reference", 20),
        line("CUDA vgg16 DeconvNet train step not slower than with torch pooling",
             _find(rows, "train_step", "cuda-vgg16-b16"), "torch", 1),
    ]
    return ["| target | measured (min) | (median) | |", "|---|---:|---:|---|"] + cuda + [
        line("CPU pool forward (16,64,112,112) float32 NCHW >= 10x `F.max_pool2d(return_indices=True)`",
             pool, "torch", 10),
        line("... and faster than `torch.compile` of that call", pool, "torch_compile", 1),
        line("... and <= 1.5x the memory floor (ours / floor)", pool, None, 1.5, higher_is_better=False),
        line("CPU pool forward channels_last at least as fast as torch's channels_last path",
             _find(rows, "pool_forward", HEADLINE_POOL_CL), "torch", 1),
        line("CPU unpool (16,64,112,112) NCHW >= 2x `F.max_unpool2d`", unpool, "torch", 2),
        line("CPU aggregation K=50 C=21 224² -> 375x500 >= 3x the interpolate + max loop",
             _find(rows, "aggregate_proposals", HEADLINE_AGG), "reference", 3),
        line("tiny DeconvNet train step not slower than with torch pooling (torch / ext)",
             _find(rows, "train_step", "cpu-tiny-b8"), "torch", 1),
    ]


def machine_lines(data: Dict[str, Any], note: str) -> List[str]:
    info = data.get("machine_info", {}).get("deconvnet_ext", {})
    build = info.get("deconvnet_ext_build", {})
    avx2 = build.get("cpu_avx2_fma") if isinstance(build, dict) else None
    load_end = data.get("deconvnet_ext", {}).get("loadavg_at_end")
    lines = [
        f"- Date: {data.get('datetime', '?')}",
        f"- CPU: {info.get('cpu_model', '?')}, {info.get('cpu_count', '?')} logical CPUs, "
        f"torch using {info.get('torch_threads', '?')} threads"
        + (f"; AVX2/FMA kernels: {avx2}" if avx2 is not None else ""),
        f"- Device: {info.get('cuda_device') or 'CPU only (no CUDA device: CUDA cases skipped)'}",
        f"- torch {info.get('torch_version', '?')}, deconvnet_ext "
        f"{build.get('version', '?') if isinstance(build, dict) else '?'}",
        f"- Load average (1, 5, 15 min) at start {_load(info.get('loadavg_at_start'))}, "
        f"at end {_load(load_end)} (the number of runnable processes; above the CPU count, "
        "other work was competing for the cores and absolute times are inflated)",
        f"- Shapes: {data.get('deconvnet_ext', {}).get('shape_set', '?')} set",
    ]
    if note:
        lines.append(f"- Note: {note}")
    return lines


def _load(values) -> str:
    return "?" if not values else "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def ratio_table(rows: List[Dict[str, Any]]) -> List[str]:
    out = ["| op | case | ours (ms) | vs torch eager | vs torch.compile | vs reference.py | ours / floor |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {OP_TITLES.get(r['op'], r['op'])} | {r['case']} | {_ms(r['times'].get('ours'))} | "
                   + " | ".join(_x(r["ratios"].get(name)) for name, _ in RIVALS)
                   + f" | {_x(r['floor_ratio'])} |")
    return out


def times_table(rows: List[Dict[str, Any]]) -> List[str]:
    names = ("ours", "torch", "torch_compile", "reference", "floor", "floor_memcpy")
    out = ["| op | case | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            if n not in r["times"] or (r["op"] == "aggregate_proposals" and n == "torch"):
                cells.append("—")
            else:
                cells.append(f"{_ms(r['times'][n])} / {_ms(r['medians'].get(n))}")
        out.append(f"| {OP_TITLES.get(r['op'], r['op'])} | {r['case']} | " + " | ".join(cells) + " |")
    return out


def memory_lines(data: Dict[str, Any]) -> List[str]:
    out = []
    levels = records(data, "switch_bytes")
    if levels:
        out += ["Pool outputs of the 224x224 DeconvNet: what each pool keeps for its unpool "
                "(from the ops' outputs on the meta device).", "",
                "| pool | batch | input | uint8 switches | torch int64 indices | saved |",
                "|---|---:|---|---:|---:|---:|"]
        for r in sorted(levels, key=lambda r: (r["batch"], r["level"])):
            out.append(f"| {r['level']} | {r['batch']} | {'x'.join(map(str, r['input_shape']))} | "
                       f"{_mib(r['switch_bytes'])} | {_mib(r['index_bytes'])} | "
                       f"{_mib(r['index_bytes'] - r['switch_bytes'])} |")
        for batch in sorted({r["batch"] for r in levels}):
            sw = sum(r["switch_bytes"] for r in levels if r["batch"] == batch)
            ix = sum(r["index_bytes"] for r in levels if r["batch"] == batch)
            out.append(f"| all five | {batch} | | {_mib(sw)} | {_mib(ix)} | {_mib(ix - sw)} |")
        out.append("")
    steps = records(data, "train_step_memory")
    if steps:
        out += ["One DeconvNet training step (same weights, same batch): the bytes autograd saves "
                "for backward, and the step's peak allocation above what was live before it (CPU: "
                "from torch.profiler's allocation events, first step; CUDA: "
                "`torch.cuda.max_memory_allocated`, after a warm-up step).", "",
                "| case | saved, ext | saved, torch | peak, ext | peak, torch | peak saving | "
                "switch saving (7 B x pooled outputs) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in steps:
            out.append(f"| {r['case']} | {_mib(r['ext_saved_for_backward_bytes'])} | "
                       f"{_mib(r['torch_saved_for_backward_bytes'])} | {_mib(r['ext_peak_step_bytes'])} | "
                       f"{_mib(r['torch_peak_step_bytes'])} | "
                       f"{_mib(r['torch_peak_step_bytes'] - r['ext_peak_step_bytes'])} | "
                       f"{_mib(r['index_saving_bytes'])} |")
        out.append("")
    shares = records(data, "pool_share")
    if shares:
        out += ["Share of one training step's time spent pooling and unpooling (forward and backward; "
                "torch.profiler self times: CPU ops on CPU, kernels on CUDA).", "",
                "| case | ext: pool+unpool / step | torch: pool+unpool / step |", "|---|---:|---:|"]
        for r in shares:
            out.append(f"| {r['case']} | {100 * r['ext_pool_share']:.1f}% ({r['ext_pool_us'] / 1e3:.1f} ms) | "
                       f"{100 * r['torch_pool_share']:.1f}% ({r['torch_pool_us'] / 1e3:.1f} ms) |")
        out.append("")
    for r in records(data, "vgg16_saved_bytes"):
        ext, tch = r["ext_saved_for_backward_bytes"], r["torch_saved_for_backward_bytes"]
        out += [f"vgg16 DeconvNet, 224x224, batch {r['case'].split('-b')[-1]} (traced on the meta device): "
                f"autograd saves {_mib(ext)} with pool_impl=\"ext\" vs {_mib(tch)} with \"torch\" "
                f"({_mib(tch - ext)} less, {100 * (tch - ext) / tch:.1f}%).", ""]
    return out


def write_report(data: Dict[str, Any], out_path: Path, chart_path: Optional[Path],
                 note: str = "", wall_seconds: Optional[float] = None, preset: str = "") -> None:
    """RESULTS.md from the suite's JSON (and the chart beside it when chart_path)."""
    rows = group_rows(data)
    run = data.get("deconvnet_ext", {})   # what run_cli saved with the JSON
    note = note or run.get("note", "")
    wall_seconds = wall_seconds or run.get("wall_seconds")
    preset = preset or run.get("preset", "")
    if chart_path is not None and rows:
        write_chart(rows, chart_path)
    settings = data.get("benchmarks", [{}])[0].get("options", {}) if data.get("benchmarks") else {}
    lines = ["# deconvnet_ext benchmark results", "",
             "Written by `deconvnet bench` (deconvnet_ext/bench.py) from the pytest-benchmark suite in "
             "`benchmarks/`; rerun it to refresh (`--report-only results.json` rewrites this page from the "
             "saved measurements). Every contender's result was checked before it was timed: against "
             "`deconvnet_ext.reference` (the train step: against the first step's loss with torch's "
             "pooling).", "",
             "## Machine", ""] + machine_lines(data, note) + [
             f"- Run: `{preset or '?'}` preset, rounds per contender >= "
             f"{settings.get('min_rounds', '?')} (max_time {settings.get('max_time', '?')} s)"
             + (f", {wall_seconds / 60:.1f} min in all" if wall_seconds else ""), "",
             "## Targets (issue 6)", ""] + target_lines(rows) + [
             "",
             "## Ratios", "",
             "`vs X` = X's time / ours (above 1: ours is faster). `ours / floor` = ours / the time of a "
             "plain copy moving the bytes the op must read and write (1 would be memory-bound "
             "perfection; the floor is the faster of torch's parallel `copy_` and numpy's one-thread "
             "memcpy). Each from the fastest round (min). For the aggregation, plain PyTorch is the "
             "per-proposal `F.interpolate` + max loop, i.e. reference.py. For the train step, ours = "
             "`pool_impl=\"ext\"`, torch eager = `pool_impl=\"torch\"`.", ""] + ratio_table(rows)
    if chart_path is not None and rows:
        lines += ["", f"![time relative to ours]({chart_path.name})"]
    lines += ["", "## Memory", ""] + memory_lines(data)
    lines += ["## Times (ms, min / median)", ""] + times_table(rows) + [""]
    out_path.write_text("\n".join(lines))


def write_chart(rows: List[Dict[str, Any]], path: Path) -> None:
    """Horizontal bars: each contender's time relative to ours, one cluster per group
    (log scale; right of 1 = slower than ours)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("torch", "torch eager"), ("torch_compile", "torch.compile"),
             ("reference", "reference.py"), ("floor", "memory floor")]
    colors = {"torch": "tab:orange", "torch_compile": "tab:green", "reference": "tab:gray",
              "floor": "tab:blue"}
    labels = [f"{OP_TITLES.get(r['op'], r['op'])}\n{r['case']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.75 * len(rows) + 1.5))
    height = 0.8 / len(names)
    for j, (key, title) in enumerate(names):
        ys, xs = [], []
        for i, r in enumerate(rows):
            ours, t = r["times"].get("ours"), r["times"].get(key)
            if key == "floor" and r["floor_ratio"]:
                t = ours / r["floor_ratio"]   # the faster of the two floor copies
            if ours and t and not (r["op"] == "aggregate_proposals" and key == "torch"):
                ys.append(i + (j - (len(names) - 1) / 2) * height)
                xs.append(t / ours)
        ax.barh(ys, xs, height=height, color=colors[key], label=title)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time relative to deconvnet_ext (1 = ours; right of the line: slower than ours)")
    ax.set_title("deconvnet_ext vs PyTorch (min of rounds)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110 if len(rows) <= 30 else 72)   # the --full chart is tall
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `deconvnet bench`."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="(default) the headline shapes, few rounds: a few minutes on 2 cores")
    size.add_argument("--full", action="store_true",
                      help="every shape (the five DeconvNet pool levels too) and more rounds")
    parser.add_argument("--benchmarks-dir", type=Path, default=None,
                        help="the suite's folder (default: benchmarks/ of this source checkout)")
    parser.add_argument("--output", type=Path, default=None,
                        help="report path (default: RESULTS.md in the benchmarks folder; "
                             "the chart results.png and raw results.json go beside it)")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only benchmarks matching this pytest -k expression")
    parser.add_argument("--max-time", type=float, default=None,
                        help="seconds of rounds per contender (pytest-benchmark --benchmark-max-time)")
    parser.add_argument("--min-rounds", type=int, default=None, help="rounds per contender at least")
    parser.add_argument("--note", default="", help="a line added to the report (e.g. the machine's load)")
    parser.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                        help="write the report from this saved results JSON; measure nothing")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")


def run_cli(args: argparse.Namespace) -> int:
    """Run the suite (or read --report-only JSON) and write the report. Returns
    pytest's exit code (0 when every benchmark passed its check)."""
    preset = "full" if getattr(args, "full", False) else "quick"
    if args.max_time is not None and args.max_time <= 0:
        raise UserError(f"--max-time must be > 0 seconds, got {args.max_time}")
    if args.min_rounds is not None and args.min_rounds < 1:
        raise UserError(f"--min-rounds must be >= 1, got {args.min_rounds}")
    if args.report_only is not None:
        data = load_json(args.report_only)
        out = args.output or find_benchmarks_dir(args.benchmarks_dir) / "RESULTS.md"
        write_report(data, out, None if args.no_chart else out.with_name("results.png"), note=args.note)
        print(f"wrote {out}")
        return 0
    bench_dir = find_benchmarks_dir(args.benchmarks_dir)
    out = args.output or bench_dir / "RESULTS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "results.json"
        code = run_suite(bench_dir, json_path, preset, args.keyword, args.max_time, args.min_rounds)
        if not json_path.is_file():
            raise UserError(f"the benchmark run wrote no results (pytest exit code {code})")
        data = load_json(json_path)
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)   # per-round samples: megabytes, unused
    wall_seconds = time.perf_counter() - start
    data.setdefault("deconvnet_ext", {}).update(preset=preset, wall_seconds=wall_seconds, note=args.note)
    out.with_name("results.json").write_text(json.dumps(data, separators=(",", ":")))
    write_report(data, out, None if args.no_chart else out.with_name("results.png"), note=args.note,
                 wall_seconds=wall_seconds, preset=preset)
    print(f"wrote {out}" + ("" if args.no_chart else f" and {out.with_name('results.png')}"))
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m deconvnet_ext.bench` (the same as `deconvnet bench`)."""
    parser = argparse.ArgumentParser(prog="deconvnet bench", description=__doc__.splitlines()[0])
    add_cli_arguments(parser)
    try:
        return run_cli(parser.parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
