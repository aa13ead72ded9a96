"""The benchmark's goals and its text report.

Each goal is a figure of the result with a target; where one is missed, the report names the stage that
holds it. Wall-time figures decide; the same figures in process CPU time (which leaves out preemption by
other jobs on a shared machine) are reported beside them.
"""
from __future__ import annotations

from .bench_stats import num

GOALS = {  # issue 13's goals
    "speedup": (">=", 60.0, "x the naive pipeline (per-window p50)"),
    "per_hop_p50_ms": ("<=", 0.6, "ms per hop, p50"),
    "per_hop_p99_ms": ("<=", 3.0, "ms per hop, p99"),
    "cpu_ms_per_audio_s": ("<=", 1.2, "ms of compute per second of audio"),
    "first_estimate_p50_s": ("<=", 1.0, "s from speech onset to first estimate, median"),
    "streams_per_core": (">=", 100.0, "real-time streams per core"),
}


def _goal_met(target: str, value) -> bool | None:
    op, bound = target.split()
    return None if value is None else (value >= float(bound) if op == ">=" else value <= float(bound))


def _goal(name: str, value) -> dict:
    op, target, what = GOALS[name]
    return {"value": num(value), "target": f"{op} {target:g}", "what": what, "met": _goal_met(f"{op} {target}", value)}


def _holder(stages: dict, key: str, of: float | None = None) -> str:
    """The stage with the largest ``stages[stage][key]``, with its value (and ``of`` what)."""
    cand = {name: v[key] for name, v in stages.items() if v.get(key) is not None}
    if not cand:
        return "unknown"
    name = max(cand, key=cand.get)
    return f"{name} ({cand[name]:.3g} of {of:.3g} ms)" if of else f"{name} ({cand[name]:.3g} ms)"


def goals(res: dict) -> dict:
    """Each goal: value, target, met, and where missed, the stage that holds it."""
    stages = {k: v for k, v in res["stages_ms"].items() if k != "total"}
    cpu = res["cpu_ms"]
    out = {
        "speedup": _goal("speedup", res.get("speedup")),
        "per_hop_p50_ms": _goal("per_hop_p50_ms", res["per_hop_ms"]["p50"]),
        "per_hop_p99_ms": _goal("per_hop_p99_ms", res["per_hop_ms"]["p99"]),
        "cpu_ms_per_audio_s": _goal("cpu_ms_per_audio_s", 1000.0 * res["rtf"]),
        "first_estimate_p50_s": _goal("first_estimate_p50_s", res["first_estimate_s"]["p50"]),
        "streams_per_core": _goal("streams_per_core", res["streams_per_core"]),
    }
    out["speedup"]["cpu_time_value"] = res.get("speedup_cpu")
    out["per_hop_p50_ms"]["cpu_time_value"] = cpu["per_hop"]["p50"]
    out["per_hop_p99_ms"]["cpu_time_value"] = cpu["per_hop"]["p99"]
    out["cpu_ms_per_audio_s"]["cpu_time_value"] = 1000.0 * res["rtf_cpu"]
    out["streams_per_core"]["cpu_time_value"] = res["streams_per_core_cpu"]
    for g in out.values():  # process CPU time leaves out preemption by other jobs on a shared machine
        if g.get("cpu_time_value") is not None:
            g["met_cpu_time"] = _goal_met(g["target"], g["cpu_time_value"])
    out["speedup"]["held_by"] = _holder(stages, "p50", res["per_window_ms"]["p50"])
    out["per_hop_p50_ms"]["held_by"] = _holder(stages, "p50", res["per_hop_ms"]["p50"])
    w = res["windows"]
    out["per_hop_p99_ms"]["held_by"] = (
        _holder(stages, "p99", res["per_hop_ms"]["p99"])
        + f"; full-window hops (first windows of a voice, n={w['full']['n']}) p50 {_fmt(w['full']['push_ms']['p50'])} ms"
        f" vs incremental p50 {_fmt(w['incremental']['push_ms']['p50'])} ms")
    total = sum((v["mean"] or 0) * v["n"] for v in stages.values())
    share = {k: {"share": 100 * (v["mean"] or 0) * v["n"] / total} for k, v in stages.items()} if total else {}
    name = max(share, key=lambda k: share[k]["share"]) if share else None
    out["cpu_ms_per_audio_s"]["held_by"] = (f"{name} ({share[name]['share']:.0f}% of all compute)" if name
                                            else "unknown")
    out["streams_per_core"]["held_by"] = _holder(stages, "p50", res["per_hop_ms"]["p50"])
    b = res.get("first_estimate_breakdown_s")
    if b:
        out["first_estimate_p50_s"]["held_by"] = (
            f"engine buffering, not compute: first_window_s={b['speech_needed']:g} s of speech before the first "
            f"window + pauses {b['pauses']:.2f} s + wait for the hop boundary {b['hop_alignment']:.2f} s (medians)")
    return out


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def report_text(res: dict, baseline_details: list[str] = ()) -> str:
    """The result as text; ``baseline_details``: lines describing the comparison pipeline, under its figures."""
    m, st = res["machine"], res["stages_ms"]
    row = "  {:30s} {:>8s} {:>8s} {:>8s} {:>8s} {:>6}"
    lines = [f"voicegender bench  {res['date']}  {res['command']}",
             f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
             f"load avg {m.get('loadavg_start')} -> {m.get('loadavg_end')}",
             f"data: {res['data']['utterances']} utterances ({res['data']['female']} F / {res['data']['male']} M), "
             f"{res['data']['audio_s']:.0f} s of audio; hop {res['engine']['hop_s']} s; one core",
             "", row.format("ms per hop (wall)", "p50", "p95", "p99", "mean", "n")]

    def add(label, v):
        lines.append(row.format(label, *(_fmt(v[k], ".3f") for k in ("p50", "p95", "p99", "mean")), v["n"]))

    for name, v in st.items():
        add({"total": "total (sum of timed stages)", "other": "other (push minus stages)"}.get(name, name), v)
    add("push, every hop", res["per_hop_ms"])
    add("push, hops classifying a window", res["per_window_ms"])
    add("  same, process CPU time", res["cpu_ms"]["per_window"])
    w = res["windows"]
    lines.append(f"  windows reusing frames: n={w['incremental']['n']}, features p50 "
                 f"{_fmt(w['incremental']['features_ms']['p50'], '.3f')} ms; full windows (first of a voice): "
                 f"n={w['full']['n']}, features p50 {_fmt(w['full']['features_ms']['p50'], '.3f')} ms")
    lines.append("")
    b = res["baseline_per_window_ms"]
    if b.get("p50") is not None:
        parts = ", ".join(f"{k} {v['p50']:.2f}" for k, v in b["parts"].items())
        lines.append(f"naive baseline per window: p50 {b['p50']:.1f} ms ({parts}); n={b['n']}")
        lines += [f"  {line}" for line in baseline_details]
        by = ", ".join(f"{k} {v:.0f}x" for k, v in res["speedup_by_stage"].items())
        lines.append(f"speedup (naive per-window p50 / ours): {res['speedup']:.1f}x wall, "
                     f"{res['speedup_cpu']:.1f}x CPU time; by stage: {by}")
    else:
        lines.append("naive baseline: not measured here (`python -m offline bench` times it beside the engine)")
    lines.append(f"real-time factor: {res['rtf']:.5f} (CPU time {res['rtf_cpu']:.5f});  streams per core: "
                 f"{res['streams_per_core']:.0f} from p50, {res['streams_per_core_mean']:.0f} from the mean")
    f, s = res["first_estimate_s"], res["stable_estimate_s"]
    lines.append(f"first estimate after speech onset: median {_fmt(f['p50'])} s, p90 {_fmt(f['p90'])} s "
                 f"({f['no_estimate']} utterances with speech got no estimate at all)")
    brk = res.get("first_estimate_breakdown_s")
    if brk:
        lines.append(f"  = speech needed {brk['speech_needed']:g} s + pauses {brk['pauses']:.2f} s + hop alignment "
                     f"{brk['hop_alignment']:.2f} s (medians)")
    lines.append(f"first correct stable estimate: median {_fmt(s['p50'])} s, p90 {_fmt(s['p90'])} s "
                 f"({s['never']} of {s['n']} utterances never settled on the reader's gender)")
    if res.get("cold_start"):
        c = res["cold_start"]
        lines.append(f"cold start (process start -> first estimate): {c['first_estimate_s']:.2f} s "
                     f"(first line {c['first_line_s']:.2f} s; median of {c['runs']}); measured apart: interpreter "
                     f"start {c['interpreter_s']:.2f} s, importing the engine and loading the bundle "
                     f"{c['import_engine_and_load_bundle_s']:.2f} s")
    if res.get("rss"):
        r = res["rss"]
        lines.append(f"peak RSS of the live engine: {r['peak_rss_mb']:.0f} MB over {r['files']} files (VmHWM; "
                     f"getrusage ru_maxrss says {r['ru_maxrss_mb']:.0f} MB, inherited from this process across "
                     f"fork + exec); heavy modules loaded: {', '.join(r['heavy_modules_loaded']) or 'none'}")
    c = res.get("concurrent")
    if c:
        lines.append(f"measured on the server (loadtest): {_fmt(c.get('streams_per_core_measured'), '.0f')} streams "
                     f"per server core" if c["available"] else f"measured concurrency: {c['note']}")
        for r in c.get("runs", []):
            lines.append(f"  {r['streams']} streams: held {r['held']}, lag p95 {r['lag_p95_s']} s, "
                         f"server {r.get('server_cpu_cores')} cores, client {r.get('client_cpu_cores')} cores")
    lines += ["", "goals (wall time; CPU time in brackets):"]
    for name, g in res["goals"].items():
        mark = "n/a " if g["met"] is None else ("MET " if g["met"] else "MISS")
        cpu = ""
        if g.get("cpu_time_value") is not None:
            cpu = f" [{_fmt(g['cpu_time_value'], '.4g')}: {'met' if g['met_cpu_time'] else 'missed'}]"
        held = f"  <- held by {g['held_by']}" if g["met"] is False and g.get("held_by") else ""
        lines.append(f"  [{mark}] {name}: {_fmt(g['value'], '.4g')}{cpu} (goal {g['target']}){held}")
    return "\n".join(lines)
