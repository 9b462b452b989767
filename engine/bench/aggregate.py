"""Aggregates of bench JSONL records, computed at read time (the JSONL stays the truth).

One slice of the records (suite, model, max_new_tokens; optionally some query kinds) becomes one
row per (method, params):

- cost: median [IQR] over the runs, and the paired ratio against the baseline (repeats of a
  query averaged first, geometric mean over queries, bootstrap interval over queries, a verdict
  only with enough queries and, for timings, a steady load: ``stats.py``);
- quality: the mean over queries with a bootstrap interval (KL, top-1 agreement, reference NLL,
  reference containment and recall, divergence), needle accuracy by depth, held-out prose;
- per query: the figures behind the row (repeats averaged), which the breakdown, the decode-vs-
  context curve and the plots read, so a plot never computes a figure the table does not show.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.bench.records import read_records
from engine.bench.stats import Interval, Ratio, Stat, load_moved, mean_interval, paired_ratio, quartiles
from engine.bench.suite_files import suite_entries
from engine.errors import InputError

# metric -> (label, unit, lower_is_better, verdict words (better, worse))
COST_METRICS: dict[str, tuple[str, str, bool, tuple[str, str]]] = {
    "prompt_tokens_effective": ("prompt tokens fed", "tok", True, ("fewer tokens", "worse")),
    "prefill_s": ("prefill (TTFT)", "s", True, ("faster", "worse")),
    "decode_tok_s": ("decode", "tok/s", False, ("faster", "worse")),
    "total_s": ("total", "s", True, ("faster", "worse")),
    "kv_bytes_stored": ("KV counted", "B", True, ("less memory", "worse")),
    "kv_bytes_peak": ("KV counted peak", "B", True, ("less memory", "worse")),
    "kv_bytes_allocated": ("KV allocated", "B", True, ("less memory", "worse")),
    "kv_copy_bytes_per_token": ("KV bytes copied / token", "B", True, ("less memory", "worse")),
    "mem_hwm_delta_bytes": ("memory high-water Δ", "B", True, ("less memory", "worse")),
    "rss_peak_bytes": ("peak memory (RSS sampled; CUDA allocator on GPU)", "B", True,
                       ("less memory", "worse")),
    "aux_s": ("aux", "s", True, ("faster", "worse")),
}
SPEED_METRICS = {"prefill_s", "decode_tok_s", "total_s"}
TIMING_METRICS = SPEED_METRICS | {"aux_s"}
# quality figure -> (label, higher is better)
QUALITY_METRICS: dict[str, tuple[str, bool]] = {
    "kl_mean": ("KL nats/token vs baseline", False),
    "top1_agree": ("top-1 agreement", True),
    "ref_nll": ("reference NLL", False),
    "contains": ("contains reference", True),
    "ref_recall": ("reference word recall", True),
    "diverged": ("greedy output differs", False),
    "rouge_l": ("ROUGE-L F1", True),
}


@dataclass
class Row:
    method: str
    label: str
    params: dict
    model_changing: bool
    speed_note: str
    ok: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    cost: dict[str, Stat] = field(default_factory=dict)
    ratio: dict[str, Ratio] = field(default_factory=dict)
    quality: dict[str, Interval] = field(default_factory=dict)
    first_divergence: Stat = field(default_factory=Stat)  # token index where greedy outputs part
    prose: dict = field(default_factory=dict)  # nll / ppl / bpb (+ baseline's) on held-out prose
    curve: list[tuple[int, float]] = field(default_factory=list)  # per query: (prompt tokens in, median decode tok/s)
    needle: dict[float, tuple[int, int]] = field(default_factory=dict)  # depth → (found, asked)
    per_query: dict[str, dict] = field(default_factory=dict)  # query → {kind, cost means, quality}
    simplification: str = ""
    # the activation sparsity a sparsity method measured at model level: mean over queries, CI
    sparsity: Interval = field(default_factory=Interval)

    @property
    def key(self) -> str:
        return row_key(self.method, self.params)

    @property
    def diverged(self) -> Optional[float]:
        return self.quality.get("diverged", Interval()).value

    @property
    def contains(self) -> Optional[float]:
        return self.quality.get("contains", Interval()).value


@dataclass
class Report:
    rows: list[Row]
    suite: str
    model: dict
    env: dict
    max_new_tokens: int
    records: int
    loadavg_start: list
    loadavg_end: list
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timing_verdicts_off: str = ""  # why timings carry no verdict ("" = they may)

    def row(self, method: str) -> Optional[Row]:
        return next((r for r in self.rows if r.method == method), None)

    def footer(self) -> str:
        e = self.env
        la = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
        text = (f"tokenforge bench · suite {self.suite} · {self.model.get('id')} "
                f"({self.model.get('dtype')}) · {e.get('device')} · torch {e.get('torch')} · "
                f"transformers {e.get('transformers')} · python {e.get('python')} · "
                f"{e.get('cpus', '?')} CPUs · load avg {la(self.loadavg_start)} → {la(self.loadavg_end)} · "
                f"max_new_tokens {self.max_new_tokens} · {self.records} records")
        if self.timing_verdicts_off:
            text += f" · {self.timing_verdicts_off}"
        return text


def row_key(method: str, params: dict) -> str:
    if not params:
        return method
    return method + "(" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + ")"


@dataclass
class Slice:
    """The records one report covers and what was left out."""

    records: list[dict]
    suite: str
    model: str
    max_new_tokens: int
    notes: list[str]


def select(records: list[dict], *, suite: Optional[str] = None, model: Optional[str] = None,
           max_new_tokens: Optional[int] = None, kinds: Optional[list[str]] = None) -> Slice:
    """One (suite, model, max_new_tokens) slice; by default that of the most recent record.
    ``kinds`` keeps only those query kinds (held-out prose always stays: it carries bpb)."""
    if not records:
        raise InputError("no valid records to report on", "run `tokenforge bench` first")
    last = max(records, key=lambda r: r["time"])
    suite = suite or last["suite"]
    model = model or last["model"]["id"]
    mnt = max_new_tokens or last["max_new_tokens"]
    notes: list[str] = []
    sel = [r for r in records if r["suite"] == suite and r["model"]["id"] == model
           and r["max_new_tokens"] == mnt]
    other = len(records) - len(sel)
    if other:
        notes.append(f"{other} records of other suites/models/max_new_tokens not included")
    if not sel:
        raise InputError(f"no records for suite {suite}, model {model}, max_new_tokens {mnt}")
    if kinds:
        sel = [r for r in sel if r["kind"] in kinds or r["kind"] == "prose"]
        notes.append(f"query kinds: {', '.join(kinds)}")
        if not any(r["kind"] != "prose" for r in sel):
            raise InputError(f"no records of kind {', '.join(kinds)}")
    return Slice(sel, suite, model, mnt, notes)


def _other_work(load: Optional[list], threads: Any) -> Optional[list]:
    """A reading taken while the bench ran, less the bench's own threads: on 2 cores a 2-thread
    run lifts the 1-minute average from the idle start reading to ~2 by itself, which is not the
    machine changing under it. The start reading (taken before the model runs) stays as it is."""
    if not load:
        return load
    own = float(threads) if isinstance(threads, (int, float)) and not isinstance(threads, bool) else 0.0
    return [max(0.0, float(load[0]) - own), *load[1:]]


def load_threshold(env: dict) -> float:
    """How far the 1-minute load average may move before timings lose their verdicts: half the
    CPU count, at least 1 (a whole core's worth of other work appearing or leaving)."""
    return max(1.0, 0.5 * float(env.get("cpus") or 2))


def aggregate(records: list[dict], *, problems: Optional[list[str]] = None,
              suite: Optional[str] = None, model: Optional[str] = None,
              max_new_tokens: Optional[int] = None, kinds: Optional[list[str]] = None,
              load_limit: Optional[float] = None) -> Report:
    """The report of one slice of the records (``select``); ``load_limit`` overrides
    ``load_threshold``."""
    sl = select(records, suite=suite, model=model, max_new_tokens=max_new_tokens, kinds=kinds)
    sel, notes = sl.records, list(sl.notes)
    by_time = sorted(sel, key=lambda r: r["time"])
    env = dict(by_time[-1]["env"])
    loads = [r["env"].get("loadavg_start") for r in sel] + \
        [_other_work(r["env"].get("loadavg"), r["env"].get("threads")) for r in sel]
    limit = load_limit if load_limit is not None else load_threshold(env)
    moved = load_moved([v for v in loads if v], limit) or ""
    base = {(r["prompt_id"], r["repeat"]): r for r in sel
            if r["method"] == "baseline" and not r["params"] and r["status"] == "ok" and r["kind"] != "prose"}
    depths = _suite_depths(sl.suite)
    rows: dict[str, Row] = {}
    for r in sel:
        k = row_key(r["method"], r["params"])
        if k not in rows:
            rows[k] = Row(r["method"], r["label"], r["params"], r["model_changing"], r["speed_note"])
        rows[k].simplification = r.get("simplification", "") or rows[k].simplification
    order = list(rows)
    for k, row in rows.items():
        mine = [r for r in sel if row_key(r["method"], r["params"]) == k]
        ok = [r for r in mine if r["status"] == "ok" and r["kind"] != "prose"]
        errs = [r for r in mine if r["status"] == "error"]
        row.ok, row.errors = len(ok), len(errs)
        row.error_messages = sorted({f"{r['prompt_id']}: {r['message']}" for r in errs})[:5]
        _costs(row, ok, base, timing_verdicts=not moved)
        _quality(row, ok, depths)
        _prose(row, mine)
    rows_list = [rows[k] for k in order if rows[k].ok or rows[k].errors or rows[k].prose]
    rows_list.sort(key=lambda r: (r.method != "baseline", order.index(r.key)))
    if "baseline" not in {r.method for r in rows_list}:
        notes.append("no baseline rows: ratios need `baseline` among the methods")
    return Report(rows=rows_list, suite=sl.suite, model=dict(by_time[-1]["model"]), env=env,
                  max_new_tokens=sl.max_new_tokens, records=len(sel),
                  loadavg_start=by_time[0]["env"].get("loadavg_start") or [],
                  loadavg_end=by_time[-1]["env"].get("loadavg") or [], problems=list(problems or []),
                  notes=notes, timing_verdicts_off=moved)


def _mean(vals: list[Any]) -> Optional[float]:
    vs = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.fmean(vs) if vs else None


def _costs(row: Row, ok: list[dict], base: dict, *, timing_verdicts: bool) -> None:
    """Median [IQR] per cost metric, the paired ratios, and the per-query means behind them."""
    for r in ok:
        pq = row.per_query.setdefault(r["prompt_id"], {"kind": r["kind"], "runs": [], "cost": {}})
        pq["runs"].append(r)
    for qid, pq in row.per_query.items():
        runs = pq.pop("runs")
        for m in list(COST_METRICS) + ["prompt_tokens_in", "new_tokens"]:
            pq["cost"][m] = _mean([r["cost"].get(m) for r in runs])
        speeds = [r["cost"]["decode_tok_s"] for r in runs if r["cost"].get("decode_tok_s")]
        pq["decode_median"] = statistics.median(speeds) if speeds else None
        first = min(runs, key=lambda r: r["repeat"])
        pq["output"] = first["quality"].get("output")
        pq["input"] = first["quality"].get("input")
    for m, (_, _, lower, words) in COST_METRICS.items():
        row.cost[m] = quartiles([r["cost"].get(m) for r in ok])
        pairs: dict[str, list] = {}
        for r in ok:
            b = base.get((r["prompt_id"], r["repeat"]))
            if b is not None:
                pairs.setdefault(r["prompt_id"], []).append((r["cost"].get(m), b["cost"].get(m)))
        row.ratio[m] = paired_ratio(pairs, lower_is_better=lower, words=words,
                                    verdicts=timing_verdicts or m not in TIMING_METRICS)
        for qid, runs in pairs.items():
            got = [a / b for a, b in runs if a is not None and b]
            row.per_query[qid].setdefault("ratio", {})[m] = _geo(got)
    curve = [(int(pq["cost"]["prompt_tokens_in"]), float(pq["decode_median"]))
             for pq in row.per_query.values()
             if pq["cost"].get("prompt_tokens_in") and pq.get("decode_median")]
    row.curve = sorted(curve)


def _geo(vals: list[float]) -> Optional[float]:
    import math

    vs = [v for v in vals if v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in vs)) if vs else None


def _quality(row: Row, ok: list[dict], depths: dict[str, float]) -> None:
    """Per-query quality (greedy: repeat 0 speaks for every repeat), then mean [95 % CI] over
    queries; needle accuracy by the planted fact's depth."""
    first = {}
    for r in sorted(ok, key=lambda r: r["repeat"]):
        first.setdefault(r["prompt_id"], r)
    for qid, r in first.items():
        q = r["quality"]
        fig = {m: q.get(m) for m in QUALITY_METRICS if m not in ("diverged", "contains")}
        fig["contains"] = None if q.get("contains") is None else float(bool(q["contains"]))
        fig["diverged"] = None if "first_divergence" not in q else float(q["first_divergence"] is not None)
        fig["first_divergence"] = q.get("first_divergence")
        pq = row.per_query.setdefault(qid, {"kind": r["kind"], "cost": {}})
        pq["quality"] = fig
        extra = q.get("extra") if isinstance(q.get("extra"), dict) else {}
        sp = extra.get("sparsity_measured")
        pq["sparsity"] = float(sp) if isinstance(sp, (int, float)) and not isinstance(sp, bool) else None
    for m in QUALITY_METRICS:
        iv = mean_interval([pq.get("quality", {}).get(m) for pq in row.per_query.values()])
        if iv.n:
            row.quality[m] = iv
    row.sparsity = mean_interval([pq.get("sparsity") for pq in row.per_query.values()])
    row.first_divergence = quartiles([pq.get("quality", {}).get("first_divergence")
                                      for pq in row.per_query.values()])
    for qid, r in first.items():
        depth = r["quality"].get("depth", depths.get(qid))
        if r["kind"] == "long" and r["repeat"] == 0 and depth is not None \
                and r["quality"].get("contains") is not None:
            hit, n = row.needle.get(float(depth), (0, 0))
            row.needle[float(depth)] = (hit + bool(r["quality"]["contains"]), n + 1)


def _prose(row: Row, mine: list[dict]) -> None:
    prose = [r for r in mine if r["kind"] == "prose" and r["status"] == "ok"]
    if prose:
        p = prose[-1]["quality"]
        row.prose = {k: p.get(k) for k in ("nll", "ppl", "bpb", "tokens", "bytes")}
        if isinstance(p.get("baseline"), dict):
            row.prose["baseline_bpb"] = p["baseline"].get("bpb")
            row.prose["baseline_ppl"] = p["baseline"].get("ppl")


def _suite_depths(suite: str) -> dict[str, float]:
    """prompt id → planted-fact depth from the suite file (records written before depth was
    stored carry none); {} when the suite cannot be read."""
    out: dict[str, float] = {}
    for rec in suite_entries(suite):
        d = rec.get("meta").get("depth") if isinstance(rec.get("meta"), dict) else None
        if isinstance(d, (int, float)) and isinstance(rec.get("id"), str):
            out[rec["id"]] = float(d)
    return out


def load_report(path: Path | str, **kw: Any) -> Report:
    recs, problems = read_records(path)
    return aggregate(recs, problems=problems, **kw)


__all__ = ["COST_METRICS", "QUALITY_METRICS", "Report", "Row", "SPEED_METRICS", "TIMING_METRICS",
           "aggregate", "load_report", "load_threshold", "row_key", "select"]
