"""Run the integrad-vs-captum benchmarks.

    python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--threads 2] [--device cpu|cuda]
                             [--out results.json] [--markdown BENCHMARKS.md]

For each workload, captum, integrad and the floor run in one process, warmed up
first, then in rounds whose order alternates (captum, integrad, floor; then
floor, integrad, captum) so slow drift of the machine cancels.  Per round the
ratios integrad/captum, integrad/floor and captum/floor are taken; the table
reports their medians.  Peak memory is measured afterwards, one profiled call
per side (see ``benchmarks/memory.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import workloads as W
from .memory import format_bytes, peak_memory, self_check

ORDER = ["toy", "mlp", "cnn", "minilm_layer", "neuron_early", "layer_mid", "memory", "auto"]


def log(msg: str = "") -> None:
    print(msg, flush=True)


def _source_digest() -> str | None:
    """Short SHA-256 over integrad's Python sources, to tie results to the code that produced them."""
    import hashlib

    try:
        import integrad
    except Exception:
        return None
    root = os.path.dirname(os.path.abspath(integrad.__file__))
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:12]


def machine_info(threads: int, device: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    try:
        import captum

        info["captum"] = captum.__version__
    except Exception:
        info["captum"] = None
    try:
        from importlib.metadata import version

        info["integrad"] = version("integrad")
    except Exception:
        info["integrad"] = None
    info["integrad_source_digest"] = _source_digest()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return None


def make_timer(device: torch.device) -> Callable[[Callable[[], Any], int], tuple[float, float]]:
    """Per-call (wall seconds, process CPU seconds) of ``fn``, averaged over ``inner`` calls."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timeit(fn: Callable[[], Any], inner: int) -> tuple[float, float]:
        sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        t1 = time.perf_counter()
        c1 = time.process_time()
        return (t1 - t0) / inner, (c1 - c0) / inner

    return timeit


#: Untimed pairs of rounds after the warm-up: 32 calls each, enough for integrad's chunk-size tuning to settle
#: (after a metered call and one untimed call, each halving takes six calls, alternating two sizes three times each;
#: five halvings take 400 rows down to 16).
SETTLING_ROUNDS = 16


def run_case(case: W.Case, device: torch.device, quick: bool) -> dict[str, Any]:
    timeit = make_timer(device)
    variants: dict[str, Callable[[], Any]] = {"captum": case.captum}
    if case.integrad is not None:
        variants["integrad"] = case.integrad
        variants.update(case.extra)
    variants["floor"] = case.floor
    res: dict[str, Any] = {"description": case.description, "rows": case.rows, **case.info}

    # Warm-up, keeping the first results for the agreement check.
    first: dict[str, Any] = {}
    peaks: dict[str, int] = {}
    profile_now = quick and case.quick_profile_warmup
    for name, fn in variants.items():
        for i in range(case.warmup):
            if i == 0 and profile_now:
                out, peaks[name] = peak_memory(fn, device)
            else:
                out = fn()
            if i == 0:
                first[name] = out
    if "integrad" in first:
        ref = case.strip(first["captum"])
        res["agreement"] = W.compare(case.strip(first["integrad"]), ref, case.rtol, case.atol_rel)
        for extra in case.extra:
            res[f"agreement_{extra}"] = W.compare(case.strip(first[extra]), ref, case.rtol, case.atol_rel)
    del first

    # Untimed rounds in the order of the timed ones, in which integrad's chunk-size tuning settles under the same
    # conditions (each call follows the others' calls, whose activations have replaced the caches' contents).
    names = list(variants)
    for _ in range(SETTLING_ROUNDS):
        for order in (names, names[::-1]):
            for n in order:
                variants[n]()

    # Rounds continue, in pairs of opposite order, until the time budget is spent (at least
    # min_rounds); a deadline rather than a count keeps the run time fixed when the machine is busy.
    budget = case.quick_budget_s if quick else case.budget_s
    min_rounds = 2 if quick else case.min_rounds
    max_rounds = 400
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    res["loadavg_before"] = loadavg()
    t_begin = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - t_begin < budget):
        for order in (names, names[::-1]):
            for n in order:
                wall, proc = timeit(variants[n], case.inner)
                times[n].append(wall)
                cpu[n].append(proc)
            rounds += 1
    res["loadavg_after"] = loadavg()
    if case.integrad_report is not None:
        last = case.integrad_report()
        res["integrad_chunks"] = {"chunk_rows": last.chunk_rows, "chunks": last.chunks, "rows": last.rows}
    t = {n: np.asarray(v) for n, v in times.items()}
    c = {n: np.asarray(v) for n, v in cpu.items()}
    res["rounds"] = rounds
    res["calls_per_sample"] = case.inner
    res["median_s"] = {n: float(np.median(v)) for n, v in t.items()}
    res["min_s"] = {n: float(np.min(v)) for n, v in t.items()}
    res["median_cpu_s"] = {n: float(np.median(v)) for n, v in c.items()}

    def med_ratio(a: str, b: str) -> dict[str, float]:
        r = t[a] / t[b]
        rc = c[a] / np.maximum(c[b], 1e-12)
        # best_ratio: ratio of the fastest calls, the estimate least affected by other load on the machine.
        return {
            "median": float(np.median(r)),
            "q25": float(np.quantile(r, 0.25)),
            "q75": float(np.quantile(r, 0.75)),
            "cpu_time_median": float(np.median(rc)),
            "best_ratio": float(t[a].min() / t[b].min()),
        }

    res["captum_floor_ratio"] = med_ratio("captum", "floor")
    if "integrad" in t:
        res["ratio"] = med_ratio("integrad", "captum")
        res["floor_ratio"] = med_ratio("integrad", "floor")
        for extra in case.extra:
            res[f"{extra}_ratio"] = med_ratio(extra, "captum")
            res[f"{extra}_floor_ratio"] = med_ratio(extra, "floor")

    # Peak memory: one measured call per variant, after the timing.
    if not profile_now:
        for n, fn in variants.items():
            _, peaks[n] = peak_memory(fn, device)
    res["peak_bytes"] = peaks
    res["peak_measured_on"] = "first warm-up call" if profile_now else "a call after warm-up and timing"
    return res


def evaluate_targets(name: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """Targets for one workload as rows: label, value, threshold, pass."""
    checks: list[dict[str, Any]] = []

    def add(label, value, thr):
        checks.append({"target": label, "value": value, "threshold": thr, "pass": (value is not None and value <= thr)})

    if name == "auto":
        for key, e in res.get("models", {}).items():
            add(
                f"{key}: true rel. L1 error / tolerance",
                (e["auto_true_error_max"] / res["tolerance"]) if "auto_true_error_max" in e else None,
                2.0,
            )
            if "rows_ratio" in e or "rows_ratio_upper_bound" not in e:
                add(f"{key}: auto rows / fixed-GL rows at same error", e.get("rows_ratio"), 0.5)
            else:
                # Fixed GL never reached auto's error within the search range: only an upper bound
                # is known, which decides the target only when it is already below the threshold.
                bound = e["rows_ratio_upper_bound"]
                checks.append(
                    {
                        "target": f"{key}: auto rows / fixed-GL rows at same error (upper bound)",
                        "value": bound,
                        "threshold": 0.5,
                        "pass": True if bound <= 0.5 else None,
                    }
                )
        return checks
    peaks = res.get("peak_bytes", {})
    metrics = {
        "ratio": res.get("ratio", {}).get("median"),
        "floor_ratio": res.get("floor_ratio", {}).get("median"),
    }
    if name == "memory":
        cap, ig, bud = peaks.get("captum"), peaks.get("integrad"), peaks.get("integrad_budget")
        metrics["mem_ratio"] = (ig / cap) if ig is not None and cap else None
        metrics["budget_peak_ratio"] = (bud / res["memory_budget_bytes"]) if bud is not None else None
        metrics["budget_time_ratio"] = res.get("integrad_budget_ratio", {}).get("median")
    for label, key, thr in W.TARGETS[name]:
        add(label, metrics.get(key), thr)
    agree = [v for k, v in res.items() if k.startswith("agreement")]
    if agree:
        checks.append(
            {
                "target": "attributions allclose to captum",
                "value": all(a["allclose"] for a in agree),
                "threshold": True,
                "pass": all(a["allclose"] for a in agree),
            }
        )
    return checks


def print_case(name: str, res: dict[str, Any]) -> None:
    if "error" in res:
        log(f"  ERROR: {res['error']}")
        return
    if name == "auto":
        return
    ms = res["median_s"]
    unit = lambda s: f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"  # noqa: E731
    log("  median time: " + ", ".join(f"{k} {unit(v)}" for k, v in ms.items()) + f"  ({res['rounds']} rounds)")
    line = f"  captum/floor {res['captum_floor_ratio']['median']:.3f}"
    if "ratio" in res:
        line += (
            f", integrad/captum {res['ratio']['median']:.3f} "
            f"[{res['ratio']['q25']:.3f}-{res['ratio']['q75']:.3f}], "
            f"integrad/floor {res['floor_ratio']['median']:.3f}"
        )
    for k in res:
        if k.endswith("_ratio") and k not in ("ratio", "floor_ratio", "captum_floor_ratio"):
            line += f", {k} {res[k]['median']:.3f}"
    log(line)
    if "ratio" in res:
        log(
            f"  (best-time ratios: integrad/captum {res['ratio']['best_ratio']:.3f}, "
            f"integrad/floor {res['floor_ratio']['best_ratio']:.3f}; "
            f"process CPU-time ratios: integrad/captum {res['ratio']['cpu_time_median']:.3f}, "
            f"integrad/floor {res['floor_ratio']['cpu_time_median']:.3f}; "
            f"load average {res['loadavg_before']} -> {res['loadavg_after']})"
        )
    log("  peak memory: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in res["peak_bytes"].items()))
    for k, v in res.items():
        if k.startswith("agreement"):
            log(
                f"  {k} with captum: allclose={v['allclose']} max|diff|={v['max_abs_diff']:.3g} "
                f"(relative to max|captum| {v['max_rel_diff']:.3g})"
            )


# --------------------------------------------------------------------------- markdown


def _fmt(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.{digits}f}"


def _load_line(report: dict[str, Any]) -> str:
    loads = [
        v for res in report["workloads"].values() for k, v in res.items() if k.startswith("loadavg") and v is not None
    ]
    if not loads:
        return ""
    threads = report["machine"]["torch_threads"]
    return (
        f"1-minute load average during the timed rounds: {min(loads):.1f} to {max(loads):.1f} on "
        f"{report['machine']['logical_cpus']} logical CPUs. The benchmark itself accounts for about {threads}; "
        f"anything above that is other processes sharing the machine, which alternating rounds and per-round "
        f"ratios are meant to cancel, though short calls stay noisy."
    )


def _verdict(p) -> str:
    return "inconclusive" if p is None else ("pass" if p else "FAIL")


def _sci(v):
    return "n/a" if v is None else f"{v:.2e}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks: integrad vs captum",
        "",
        "Generated by `python -m benchmarks.run"
        + (" --quick" if report["quick"] else "")
        + f" --threads {m['threads_requested']} --device {m['device']} --markdown BENCHMARKS.md`.",
        "",
        f"Machine: {m['cpu_model']} ({m['logical_cpus']} logical CPUs), torch threads {m['torch_threads']}, "
        f"torch {m['torch']}, captum {m['captum']}, integrad {m['integrad']} "
        f"(source digest {m.get('integrad_source_digest')}), Python {m['python']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + ".",
        "",
        _load_line(report),
        "",
        "Method: both libraries get the same model, inputs, baselines, targets, `n_steps` and "
        '`method="gausslegendre"`, and are warmed up first, then run untimed rounds in which integrad\'s '
        "chunk-size tuning settles (an attribution object halves its chunks on a CPU while that makes them faster "
        "per row). Timings alternate in rounds "
        "(captum, integrad, floor, then the reverse order); each ratio is the median of the per-round ratios "
        "(interquartile range in brackets); targets are judged on it. The best-time ratio (fastest integrad call / "
        "fastest captum call) is shown beside it because it is the least affected by other load on the machine; "
        "the load average during each workload is in the JSON output. The *floor* is one forward + backward over the "
        "already-built "
        "expanded batch (`n_steps x batch` rows, gradient of the selected outputs' sum): the least work any "
        "Integrated Gradients implementation has to do (for layer methods, with the forward up to the layer on "
        "inputs and baselines that gives the path's ends; the toy workload measures per-call latency and its "
        "floor, a few microseconds, is not held to 1.10). Peak memory is the maximum of live tensor bytes above "
        "the level before the call (CPU: replayed allocator events from the torch profiler; CUDA: "
        "`max_memory_allocated`). Per-workload definitions of the floor, and the options, are in "
        "`benchmarks/README.md`.",
        "",
        "| workload | integrad / captum | integrad / floor | captum / floor | best-time ratio integrad / captum "
        "| peak captum | peak integrad | peak floor | allclose | targets | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in report["workloads"].items():
        if name == "auto":
            continue
        if "error" in res:
            lines.append(f"| {name} | error: {res['error'].splitlines()[0]} | | | | | | | | | FAIL |")
            continue
        r = res.get("ratio")
        fr = res.get("floor_ratio")
        cf = res["captum_floor_ratio"]
        pk = res["peak_bytes"]
        agree = [v["allclose"] for k, v in res.items() if k.startswith("agreement")]
        checks = res.get("checks", [])
        tg = "; ".join(f"{c['target']} <= {c['threshold']}" for c in checks if c["threshold"] is not True)
        ok = all(c["pass"] for c in checks) if checks else False
        ratio_txt = f"{r['median']:.3f} [{r['q25']:.2f}-{r['q75']:.2f}]" if r else "n/a"
        lines.append(
            f"| {name} | {ratio_txt} | {_fmt(fr['median'] if fr else None)} | {cf['median']:.3f} "
            f"| {_fmt(r['best_ratio'] if r else None)} "
            f"| {format_bytes(pk.get('captum'))} | {format_bytes(pk.get('integrad'))} "
            f"| {format_bytes(pk.get('floor'))} | {_fmt(all(agree)) if agree else 'n/a'} | {tg} "
            f"| {'pass' if ok else 'FAIL'} |"
        )
    lines += ["", "## Targets", "", "| workload | target | value | threshold | result |", "|---|---|---|---|---|"]
    for name, res in report["workloads"].items():
        for c in res.get("checks", []):
            lines.append(
                f"| {name} | {c['target']} | {_fmt(c['value'])} | "
                f"{_fmt(c['threshold']) if not isinstance(c['threshold'], bool) else 'yes'} "
                f"| {_verdict(c['pass'])} |"
            )
    if "memory" in report["workloads"] and "peak_bytes" in report["workloads"]["memory"]:
        mres = report["workloads"]["memory"]
        pk = mres["peak_bytes"]
        lines += [
            "",
            "## memory workload",
            "",
            f"{mres['description']}.",
            "",
            "| variant | median time | time / captum (median of per-round ratios) | peak memory | peak / captum's |",
            "|---|---|---|---|---|",
        ]
        cap_floor = mres["captum_floor_ratio"]["median"]
        rel = {
            "captum": 1.0,
            "floor": 1.0 / cap_floor if cap_floor else None,
            "integrad": mres.get("ratio", {}).get("median"),
            "integrad_budget": mres.get("integrad_budget_ratio", {}).get("median"),
        }
        for k in pk:
            lines.append(
                f"| {k} | {mres['median_s'][k]:.3f} s | {_fmt(rel.get(k))} "
                f"| {format_bytes(pk[k])} | {_fmt(pk[k] / pk['captum'] if pk.get('captum') else None)} |"
            )
    if "auto" in report["workloads"] and "models" in report["workloads"]["auto"]:
        a = report["workloads"]["auto"]
        ref_n, n_max = a["reference_points"], a["fixed_gl_search_max"]
        lines += [
            "",
            "## auto workload (error control)",
            "",
            f'`n_steps="auto", tolerance={a["tolerance"]:g}`. Two errors per model, each the worst '
            f"per-example relative L1 error: against a {ref_n}-point Gauss-Legendre reference (the target's "
            f"wording: within 2 x tolerance), and against an accurate reference (for the ReLU networks an exact "
            f"walk through the linear regions of the path, for the smooth networks the GL reference itself), both "
            f"computed by independent code in `benchmarks/workloads.py`. For ReLU networks the integrand is "
            f"discontinuous and GL converges like 1/n, so the GL reference is only good to the 'reference "
            f"uncertainty' shown (its error against the exact walk). Fixed GL = smallest `n_steps` (doubling, "
            f"then bisection, up to {n_max}) whose error against the accurate reference is no larger than "
            f"auto's; '> {n_max}' means it was not reached, and the row ratio is then an upper bound. "
            f"'Per-example GL / fixed' is the rows of GL with each example's own smallest n for that error, "
            f"as if it were known in advance, over fixed GL's: the most a per-example choice of n can save "
            f"when each example is integrated by GL's points.",
            "",
            "| model | auto rows | auto error vs GL reference | auto error vs accurate reference "
            "| auto estimate | fixed-GL n (rows) at same error | rows auto / fixed | per-example GL / fixed "
            "| fixed-GL n at tolerance | reference uncertainty | best time auto | best time fixed GL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in a["models"].values():
            if e.get("fixed_gl_n"):
                fixed = f"{e['fixed_gl_n']} ({e['fixed_gl_rows']})"
            else:
                fixed = f"> {n_max} (> {e.get('fixed_gl_rows_lower_bound')})"
            ratio = (
                _fmt(e.get("rows_ratio"))
                if "rows_ratio" in e
                else (f"< {_fmt(e['rows_ratio_upper_bound'])}" if "rows_ratio_upper_bound" in e else "n/a")
            )
            lines.append(
                f"| {e['description']} | {e.get('auto_rows', 'n/a')} | {_sci(e.get('auto_true_error_max'))} "
                f"| {_sci(e.get('auto_true_error_accurate_max'))} "
                f"| {_sci(e.get('auto_error_estimate_max'))} | {fixed} | {ratio} | {_fmt(e.get('oracle_rows_ratio'))} "
                f"| {e.get('fixed_gl_n_at_tolerance') or f'> {n_max}'} | {_sci(e.get('reference_uncertainty'))} "
                f"| {_fmt(e.get('auto_time_s'))} s | {_fmt(e.get('fixed_gl_time_s'))} s |"
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (about 2 minutes in all)")
    p.add_argument("--only", default=None, help="comma-separated workload names: " + ", ".join(ORDER))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", default=None, help="write the full results as JSON here")
    p.add_argument("--markdown", default=None, help="write the results table (e.g. BENCHMARKS.md)")
    p.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="run nothing: write --markdown from a results file saved earlier with --out",
    )
    args = p.parse_args(argv)
    if args.render:
        if not args.markdown:
            p.error("--render needs --markdown")
        with open(args.render) as fh:
            saved = json.load(fh)
        with open(args.markdown, "w") as fh:
            fh.write(markdown(saved))
        log(f"wrote {args.markdown} from {args.render}")
        return 0

    names = ORDER if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        p.error(f"--only: unknown workload(s) {unknown}; choose from {ORDER}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device must be 'cpu' or 'cuda[:i]', got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    device = torch.device(args.device)

    report: dict[str, Any] = {"quick": args.quick, "machine": machine_info(args.threads, args.device), "workloads": {}}
    log(f"machine: {json.dumps(report['machine'])}")
    if device.type == "cpu":
        report["memory_self_check"] = self_check(verbose=True)
    ig_mod, why = W.load_integrad()
    if ig_mod is None:
        log(f"integrad not importable ({why}); timing captum and the floor only")
        report["integrad_import_error"] = why
    t_start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        log(f"\n== {name}")
        try:
            if name == "auto":
                res = W.run_auto(ig_mod, device, args.quick, log=log)
            else:
                case = W.BUILDERS[name](ig_mod, device, args.quick)
                log(f"  {case.description}")
                res = run_case(case, device, args.quick)
                del case
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            log(res["traceback"])
        if "error" not in res:
            res["checks"] = evaluate_targets(name, res)
        res["wall_s"] = time.perf_counter() - t0
        report["workloads"][name] = res
        print_case(name, res)
        for c in res.get("checks", []):
            log(f"  target {c['target']}: {_fmt(c['value'])} (<= {c['threshold']}) -> {_verdict(c['pass'])}")
        log(f"  ({res['wall_s']:.1f} s)")
    report["total_s"] = time.perf_counter() - t_start
    log(f"\ntotal {report['total_s']:.1f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        log(f"wrote {args.out}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(report))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
