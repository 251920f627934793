"""Summary of benchmarks/gpu_check.sh: OUTDIR/gpu_check.md and OUTDIR/gpu_check.json
from the sections' status file (name, rc, seconds per line) and gpu_bench.json.

    python benchmarks/gpu_summary.py OUTDIR STATUS_TSV DEVICE_NAME SECONDS

Exit status 1 when a section failed (skipped ones do not count).
"""
import json, os, sys
out, status_path, device, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sections = []
for line in open(status_path):
    name, rc, secs = line.rstrip("\n").split("\t")
    sections.append({"section": name, "status": "ok" if rc == "0" else ("skipped" if rc == "skipped" else f"failed ({rc})"),
                     "seconds": int(secs), "log": f"gpu_check_logs/{name}.log"})
bench = {}
path = os.path.join(out, "gpu_bench.json")
if os.path.exists(path):
    try:
        bench = json.load(open(path))
    except ValueError:
        bench = {"error": "unreadable gpu_bench.json"}
summary = {"device": device, "seconds": seconds, "sections": sections, "benchmarks": bench}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)

md = [f"# GPU check: {device}", "", f"Wall time {seconds} s. Logs in `gpu_check_logs/`.", "",
      "| section | status | seconds |", "|---|---|---|"]
md += [f"| {s['section']} | {s['status']} | {s['seconds']} |" for s in sections]
sec = bench.get("sections", {})
bw = sec.get("copy_bandwidth", {}).get("result", {}).get("copy_bytes_per_s")
if bw:
    md += ["", f"Device-to-device copy bandwidth: {bw / 1e9:.0f} GB/s (read + write)."]
rows = sec.get("pool_unpool", {}).get("result") or []
if rows:
    md += ["", "## Pool / unpool, 2x2 stride 2, batch 64 (ratio = torch time / ours; interleaved, median of 3 trials, [min, max])", "",
           "| op | case | ours (ms) | torch (ms) | ratio | % of copy bandwidth |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "ratio" in r:
            md.append(f"| {r['op']} | {r['case']} | {1e3 * r['ours_s']:.3f} | {1e3 * r['torch_s']:.3f} | "
                      f"{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] | "
                      f"{100 * r['share_of_copy_bandwidth']:.0f}% |")
        else:
            md.append(f"| {r['op']} | {r['case']} | error: {r.get('error', '?')} | | | |")
agg = sec.get("aggregate", {}).get("result")
if agg:
    md += ["", "## aggregate_proposals", "",
           f"{agg['case']}: {1e3 * agg['ours_s']:.2f} ms vs the interpolate + paste loop "
           f"{1e3 * agg['torch_s']:.2f} ms: x{agg['ratio']:.1f} [{agg['ratio_min']:.1f}, {agg['ratio_max']:.1f}]; "
           f"{agg['launches_op']} kernel launch(es) per op call, {agg['launches_public']} through the public wrapper."]
ts = sec.get("train_step", {}).get("result")
if ts:
    md += ["", "## vgg16 DeconvNet train step (ext vs torch pooling)", "",
           f"{ts['case']}: ext {1e3 * ts['ours_s']:.1f} ms, torch {1e3 * ts['torch_s']:.1f} ms: "
           f"x{ts['ratio']:.3f} [{ts['ratio_min']:.3f}, {ts['ratio_max']:.3f}]."]
    if "peak_bytes_ext" in ts:
        md.append(f"Peak memory of a step: ext {ts['peak_bytes_ext'] / 2**20:.0f} MiB, torch "
                  f"{ts['peak_bytes_torch'] / 2**20:.0f} MiB. Pool + unpool share of CUDA time: "
                  f"ext {100 * ts['pool_unpool_share_ext']:.1f}%, torch {100 * ts['pool_unpool_share_torch']:.1f}%.")
for name, s in sec.items():
    if "error" in s:
        md += ["", f"Benchmark section {name} failed:", "", "```", s["error"], "```"]
open(os.path.join(out, "gpu_check.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
bad = [s for s in sections if s["status"] != "ok" and s["status"] != "skipped"]
sys.exit(1 if bad else 0)
