"""The benchmark suite: ``python benchmarks/run.py [--quick] [--json out.json]``.

One subprocess per workload (so that ru_maxrss is that workload's peak memory), then
neural-tangents in its own venv on W1's final weights. Prints the ratio table and the targets,
and writes everything to JSON (default: benchmarks/results/latest.json, or quick.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, run as a script

from benchmarks.common import HERE, NT_PYTHON, RESULTS_DIR, add_peer_path  # noqa: E402
from benchmarks.workloads import SPECS  # noqa: E402

# (steps, check_every) per workload: five checks each. Fewer than 200 steps where one measured step
# costs 50+ GD steps (W2, W3: about an hour otherwise on 2 cores); the warm starts see the same
# step-to-step changes either way.
# W5 measures every 50 steps and is checked once, at its last measurement (the float64 ARPACK
# references at n = 50,000 take minutes each).
FULL = {"W1": (200, 40), "W2-traced": (40, 8), "W2-full": (20, 4), "W3": (50, 10), "W4": (100, 20),
        "W5": (200, 200)}
QUICK = {"W1": (15, 5), "W2-traced": (10, 5), "W2-full": (4, 2), "W3": (15, 5), "W4": (15, 5),
         "W5": (100, 100)}
# Plain GD steps, neither timed nor measured, before a quick trajectory: 15 measured steps from
# initialisation see only the approach to the edge (W1: 5 HVPs a step, against 2 at the edge).
# The full suite starts at initialisation and measures the whole way.
QUICK_LEAD_IN = {"W1": 150, "W3": 60, "W4": 60}


def machine() -> dict[str, object]:
    import numpy  # noqa: PLC0415
    import scipy  # noqa: PLC0415
    import torch  # noqa: PLC0415

    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "scipy": scipy.__version__}
    add_peer_path()
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415
    for dist in ("PyHessian", "nngeometry", "hessian-eigenthings"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(ram, 1),
            "torch_default_threads": torch.get_num_threads(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def thread_env(threads: int) -> dict[str, str]:
    """Environment pinning torch, BLAS and XLA to ``threads`` (0: leave the defaults)."""
    env = dict(os.environ)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def run_workload(name: str, steps: int, check_every: int, tmp: Path, peers: str | None,
                 quick: bool, device: str = "cpu", threads: int = 1, lead_in: int = 0) -> dict:
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(HERE / "harness.py"), name, "--steps", str(steps),
           "--check-every", str(check_every), "--lead-in", str(lead_in), "--json", str(out)]
    if peers is not None:
        cmd += ["--peers", peers]
    if SPECS[name].neural_tangents:
        cmd += ["--weights", str(tmp / f"{name}.npz")]
    if quick:
        cmd.append("--quick")
    cmd += ["--device", device, "--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=thread_env(threads))
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def run_neural_tangents(name: str, res: dict, tmp: Path, repeats: int, threads: int) -> dict | None:
    """neural-tangents in its own venv; ratios to the torch GD step are cross-process."""
    if not NT_PYTHON.exists():
        return {"skipped": "no neural-tangents venv (run benchmarks/setup_peers.sh)"}
    out = tmp / f"{name}-nt.json"
    cmd = [str(NT_PYTHON), str(HERE / "peer_nt.py"), str(tmp / f"{name}.npz"), "--json", str(out),
           "--repeats", str(repeats), "--k", str(res["config"]["k"]),
           "--activation", res["config"]["activation"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    if proc.returncode != 0:
        return {"skipped": f"neural-tangents failed: {proc.stderr.strip().splitlines()[-1:]}"}
    nt = json.loads(out.read_text())
    for key, entry in nt.items():
        if key.startswith("nt_"):
            entry["ratio_to_gd"] = entry["seconds_median"] / res["gd_step_s"]  # cross-process
            entry["ratio_to_jax_gd"] = entry["seconds_median"] / nt["gd_step_median_s"]
            entry["pipeline_ratio_to_gd"] = entry["pipeline_seconds_median"] / res["gd_step_s"]
    return nt


# The error columns of our measurements (relative; the peers' have their own columns).
OWN_ERRORS = ("sharpness", "cold_sharpness", "topk", "top1", "cold_topk")


def targets(results: dict[str, dict]) -> list[dict]:
    """The issue's targets, each with the measured figure and whether it is met."""
    rows = []

    def add(name: str, value: float | None, op: str, bound: float, detail: str = "") -> None:
        if value is None or math.isnan(value):
            ok = None
        else:
            ok = value <= bound if op == "<=" else value >= bound
        rows.append({"target": name, "value": value, "op": op, "bound": bound, "met": ok,
                     "detail": detail})

    def peer(res: dict, key: str, field: str = "ratio_to_gd") -> float | None:
        return res.get("peers", {}).get(key, {}).get(field)

    w1 = results.get("W1")
    if w1:
        cold = w1["ratio_to_gd"].get("cold_spectrum")
        beside = w1.get("cold_ratio_beside", {}).get("cold_spectrum")
        add("W1 cold K + top-20, one ntk_eigenpairs call at its defaults (x GD step)", cold, "<=", 8.0,
            f"{beside:.2f} x the GD steps timed beside it" if beside else "")
        jacrev_eigh = w1["ratio_to_gd"].get("jacrev_eigh")
        add("W1 cold K + top-20: speed-up vs torch.func jacrev + eigh (same process)",
            jacrev_eigh / cold if jacrev_eigh and cold else None, ">=", 30.0)
        ours = w1["ratio_to_gd"]["ntk+topk+kta"]
        add("W1 exact NTK + top-20 + KTA (x GD step)", ours, "<=", 6.0)
        in_trainer = w1["ratio_to_gd"].get("ntk+topk+kta_in_trainer")
        add("W1 exact NTK + top-20 + KTA in the trainer (x GD step; its forward is the GD step's)",
            in_trainer, "<=", 4.0, f"standalone {ours:.2f}")
        add("W1 warm sharpness in the trainer (x GD step)", w1["ratio_to_gd"]["sharpness"], "<=", 5.0,
            f"{w1['ours']['hvp']['products_median']:g} HVPs (median)")
        jr = peer(w1, "jacrev")
        add("W1 speed-up vs torch.func Jacobian contraction (its K alone)",
            jr / ours if jr else None, ">=", 50.0)
        ntk_alone = w1["ratio_to_gd"].get("ntk")
        add("W1 speed-up vs torch.func Jacobian contraction (K against K)",
            jr / ntk_alone if jr and ntk_alone else None, ">=", 50.0)
        nt = w1.get("neural_tangents") or {}
        sd = nt.get("nt_structured_derivatives", {}).get("ratio_to_gd")
        add("W1 speed-up vs neural-tangents STRUCTURED_DERIVATIVES (its K alone; cross-process)",
            sd / ours if sd else None, ">=", 2.0)
        sdp = nt.get("nt_structured_derivatives", {}).get("pipeline_ratio_to_gd")
        add("W1 speed-up vs neural-tangents STRUCTURED_DERIVATIVES + eigh + KTA (cross-process)",
            sdp / ours if sdp else None, ">=", 2.0)
        warm = w1["ours"]["hvp"]["products_median"]
        cold = peer(w1, "eigsh_cold", "products_median")
        add("W1 Hessian HVPs: eigsh from scratch / ours warm", cold / warm if cold else None, ">=", 5.0)
        ph = peer(w1, "pyhessian_top1")
        s = w1["ratio_to_gd"]["sharpness_standalone"]
        add("W1 sharpness speed-up vs PyHessian top-1 (both standalone)", ph / s if ph else None,
            ">=", 3.0)
    w4 = results.get("W4")
    if w4:
        add("W4 matrix-free top-5 (x GD step)", w4["ratio_to_gd"]["matrix_free"], "<=", 30.0)
        o = w4["ours"]
        add("W4 products: cold / warm", o["topk_cold"]["products_median"] / o["topk"]["products_median"],
            ">=", 1.5)
    worst = max(((res["errors"][key]["max"], f"{name} {key}") for name, res in results.items()
                 for key in OWN_ERRORS if key in res["errors"]), default=None)
    if worst:
        add("largest relative error of ours against the float64 references, any workload",
            worst[0], "<=", 1e-4, worst[1])
    for name in ("W2-traced", "W2-full", "W5"):
        if name not in results:
            continue
        res, detail = results[name], ""
        if res.get("config", {}).get("n", 0) >= 50_000:  # W5: what one measured step costs
            o = res["ours"]
            seconds = o["matrix_free"]["seconds_median"] + o["kta"]["seconds_median"]
            detail = (f"a measured step: {res['ratio_to_gd']['matrix_free+kta']:.1f} GD steps, "
                      f"{seconds:.1f} s, {o['topk']['products_median']:g} products")
        add(f"{name} peak memory (GiB), J never formed", res["memory_mib"]["peak"] / 1024, "<=", 24.0,
            detail)
    return rows


def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


OUR_ROWS = [("ntk", "exact NTK", None, None),
            ("ntk_in_trainer", "exact NTK (in trainer: no forward of its own)", None, None),
            ("topk", "top-k eigenpairs (warm)", "topk", "topk_cold"),
            ("kta", "KTA, centred KTA, A_k", "kta", None), ("ntk+topk+kta", "NTK + top-k + KTA", None, None),
            ("ntk+topk+kta_in_trainer", "NTK + top-k + KTA (in trainer)", None, None),
            ("matrix_free", "matrix-free top-k (warm)", "topk", "topk_cold"),
            ("matrix_free+kta", "matrix-free top-k + KTA", None, None),
            ("sharpness", "sharpness (warm, in trainer)", "hvp", "hvp_cold"),
            ("sharpness_standalone", "sharpness (warm, standalone)", "hvp", None),
            ("cold_spectrum", "K + top-k, cold (ntk_eigenpairs defaults)", "cold_spectrum", None),
            ("cold_sharpness", "sharpness, cold (hessian_sharpness)", None, None),
            ("jacrev_eigh", "torch.func jacrev + eigh, cold", None, None)]
ERR_OF = {"topk": "topk", "matrix_free": "topk", "kta": "kta_abs", "sharpness": "sharpness",
          "sharpness_standalone": "sharpness", "cold_spectrum": "cold_topk",
          "cold_sharpness": "cold_sharpness", "jacrev_eigh": "jacrev_eigh"}


def format_table(results: dict[str, dict]) -> str:
    head = f"{'':2s}{'measurement':44s} {'x GD':>9s} {'products':>9s} {'cold':>6s} {'max err':>9s}"
    lines = []
    for name, res in results.items():
        mem = res["memory_mib"]
        lines += ["", f"{name}: {res['title']}",
                  f"  GD step {res['gd_step_s'] * 1e3:.1f} ms, p = {res['params']:,}, kernel rows "
                  f"{res['kernel_rows']:,}, {res['steps']} steps"
                  + (f" after {res['lead_in']} unmeasured" if res.get("lead_in") else "")
                  + f", peak RSS {mem['peak']:.0f} MiB",
                  head]
        o, r, err = res["ours"], res["ratio_to_gd"], res["errors"]
        for key, label, warm, cold in OUR_ROWS:
            if key not in r:
                continue
            p = o.get(warm, {}).get("products_median") if warm else None
            c = o.get(cold, {}).get("products_median") if cold else None
            e = err.get(ERR_OF.get(key, ""), {}).get("max")
            lines.append(f"  {label:44s} {_fmt(r[key]):>9s} {_fmt(p, '.0f'):>9s} {_fmt(c, '.0f'):>6s} "
                         f"{_fmt(e, '.1e'):>9s}")
        angles = [f"{label} {err[key]['max']:.1e}" for key, label in
                  (("topk_subspace", "warm"), ("cold_subspace", "cold")) if key in err]
        if angles:
            lines.append(f"  top-k subspace vs dense eigh, max angle (rad): {', '.join(angles)}")
        flips = res.get("gate_flips", [])
        if any(flips):
            lines.append(f"  ReLU gates the float64 forward sets otherwise: {max(flips)} at most, at "
                         f"{sum(f > 0 for f in flips)} of {len(flips)} checks (the references keep "
                         f"the float32 model's)")
        for key, entry in res.get("peers", {}).items():
            ratio = entry.get("pipeline_ratio_to_gd", entry.get("ratio_to_gd"))
            label = f"peer {key}" + (" (K + eigh + KTA)" if "pipeline_ratio_to_gd" in entry else "")
            lines.append(f"  {label:44s} {_fmt(ratio):>9s} {_fmt(entry.get('products_median'), '.0f'):>9s}"
                         f" {'':>6s} {_fmt(entry.get('err_max'), '.1e'):>9s}")
        for key, entry in (res.get("neural_tangents") or {}).items():
            if key.startswith("nt_"):
                lines.append(f"  {'peer ' + key + ' (K; cross-process)':44s} {_fmt(entry['ratio_to_gd']):>9s}"
                             f" {'':>9s} {'':>6s} {_fmt(entry.get('err'), '.1e'):>9s}"
                             f"   ({entry['ratio_to_jax_gd']:.1f}x JAX GD step; K + eigh + KTA "
                             f"{_fmt(entry.get('pipeline_ratio_to_gd'))})")
        if res.get("peers_skipped"):
            lines.append(f"  (not installed: {', '.join(res['peers_skipped'])})")
    return "\n".join(lines)


def format_targets(rows: list[dict]) -> str:
    lines = ["", "targets:"]
    for t in rows:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        detail = f"; {t['detail']}" if t.get("detail") else ""
        value = _fmt(t["value"], ".1e" if t["bound"] < 0.01 else ".2f")
        lines.append(f"  [{mark:6s}] {t['target']}: {value} ({t['op']} {t['bound']:g}){detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short trajectories (a few minutes)")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/)")
    parser.add_argument("--workloads", default=",".join(SPECS),
                        help="comma-separated subset; started in this order")
    parser.add_argument("--steps", type=int, default=None, help="override steps for every workload")
    parser.add_argument("--check-every", type=int, default=None)
    parser.add_argument("--lead-in", type=int, default=None,
                        help="plain GD steps before the measured trajectory (default: "
                             "QUICK_LEAD_IN with --quick, else 0)")
    parser.add_argument("--peers", default=None, help="comma-separated peers ('' for none)")
    parser.add_argument("--nt-repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1,
                        help="workloads run side by side (each its own process; with --threads 1, "
                             "up to the number of cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (see gpu.sh)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch, BLAS and XLA (0: their defaults). One thread "
                             "by default: on a shared machine oversubscribed threads distort ratios")
    parser.add_argument("--show", default=None, metavar="JSON",
                        help="only print the table and targets of a results file")
    args = parser.parse_args(argv)
    if args.show:
        saved = json.loads(Path(args.show).read_text())
        done = {k: v for k, v in saved["workloads"].items() if "failed" not in v}
        print(format_table(done))
        print(format_targets(saved["targets"]))
        return 0
    plan = QUICK if args.quick else FULL
    names = args.workloads.split(",")

    def one(name: str, tmp: Path) -> dict:
        steps, every = plan[name]
        steps = args.steps or steps
        every = min(args.check_every or every, steps)
        lead_in = args.lead_in if args.lead_in is not None else (
            QUICK_LEAD_IN.get(name, 0) if args.quick else 0)
        print(f"[{name}] {steps} steps after {lead_in} unmeasured, checks every {every} ...",
              flush=True)
        try:
            res = run_workload(name, steps, every, tmp, args.peers, args.quick, args.device, args.threads,
                               lead_in)
        except subprocess.CalledProcessError as exc:
            print(f"[{name}] failed (exit {exc.returncode})", flush=True)
            return {"failed": f"exit {exc.returncode}"}
        if SPECS[name].neural_tangents and (args.peers is None or "nt" in args.peers.split(",")):
            res["neural_tangents"] = run_neural_tangents(name, res, tmp, args.nt_repeats, args.threads)
        print(format_table({name: res}), flush=True)
        return res

    with tempfile.TemporaryDirectory() as tmpdir, ThreadPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(one, name, Path(tmpdir)) for name in names}
        results = {name: futures[name].result() for name in SPECS if name in futures}
    done = {name: res for name, res in results.items() if "failed" not in res}
    rows = targets(done)
    print(format_table(done))
    print(format_targets(rows))
    out = Path(args.json) if args.json else RESULTS_DIR / ("quick.json" if args.quick else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    info = {**machine(), "threads": args.threads, "jobs": args.jobs, "command": command}
    out.write_text(json.dumps({"machine": info, "quick": args.quick, "workloads": results,
                               "targets": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
