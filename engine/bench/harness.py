"""The comparison-dashboard harness: run methods over a versioned query suite and append one
complete JSONL record per (method, query, repeat).

Measurement rules (METHODS.md §4): one discarded warm-up per method, >= 1 (default 5) repeats,
methods interleaved within each repeat (their order rotates so no method always runs first),
the load average recorded at the start of the bench and with every record. Quality is measured
against the baseline's greedy continuation, which is recomputed for every query on the
unmodified model (so it exists even when "baseline" is not among the methods):

- fidelity: teacher-forced KL(baseline || method) in nats/token on that continuation, top-1
  agreement, and the first greedy divergence of the method's own output;
- task: reference-answer NLL after the method's prompt, and whether the output contains it;
- model-changing methods: NLL / perplexity / bits per byte on the held-out prose.

Greedy quality is deterministic, so it is computed once per (method, query) and copied into each
repeat's record; timings are per repeat. Storage is append-only; aggregates are computed at read
time (``engine/bench/report.py``). A rerun with the same output file resumes: records already
present with status "ok" for the same (model, method, params, max_new_tokens, prompt, repeat)
are skipped; failed ones are retried.
"""
from __future__ import annotations

import json
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from engine.atomic import append_line
from engine.bench.records import (COST_KEYS, SCHEMA, SCHEMA_VERSION, read_records,
                            validate_record)
from engine.errors import InputError
from engine.bench.methods import make_method, parse_methods
from engine.bench.methods.base import QUERY_KINDS, Method, Query
from engine.progress import Cancelled, CancelToken, ProgressFn, check, report
from engine.bench.suite_files import suite_path


# ---- suite -------------------------------------------------------------------------------------


@dataclass
class Suite:
    name: str
    path: Path
    queries: list[Query]
    prose: Optional[str] = None  # held-out text for NLL / bits per byte
    prose_id: Optional[str] = None


def load_suite(name: str, *, kinds: Optional[Iterable[str]] = None,
               ids: Optional[Iterable[str]] = None) -> Suite:
    """Parse a suite JSONL; any malformed line raises an InputError naming the line number."""
    path = suite_path(name)
    queries: list[Query] = []
    prose = prose_id = None
    seen: set[str] = set()
    suite_name: Optional[str] = None
    from engine.bounded_json import iter_jsonl

    for no, rec, _ in iter_jsonl(path, "suite"):
        where = f"{path.name} line {no}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        for key in ("suite", "id", "kind", "prompt"):
            if not isinstance(rec.get(key), str):
                raise InputError(f"{where}: field {key!r} missing or not a string")
        if suite_name is None:
            suite_name = rec["suite"]
        elif rec["suite"] != suite_name:
            raise InputError(f"{where}: suite {rec['suite']!r} differs from {suite_name!r}")
        if rec["kind"] not in QUERY_KINDS:
            raise InputError(f"{where}: kind {rec['kind']!r} is not one of {', '.join(QUERY_KINDS)}")
        if rec["id"] in seen:
            raise InputError(f"{where}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
        for key in ("system", "document", "reference"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise InputError(f"{where}: field {key!r} must be a string or null")
        turns = rec.get("turns") or []
        meta = rec.get("meta") or {}
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise InputError(f"{where}: 'turns' must be a list of strings")
        if not isinstance(meta, dict):
            raise InputError(f"{where}: 'meta' must be an object")
        if rec["kind"] == "prose":
            text = rec.get("document")
            if text is None and "file" in meta:
                fp = path.parent / str(meta["file"])
                try:
                    text = fp.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise InputError(f"{where}: cannot read prose file {fp.name}: {e}") from e
            if not text or not text.strip():
                raise InputError(f"{where}: prose entry has no text")
            prose, prose_id = text, rec["id"]
            continue
        if rec["kind"] in ("qa", "long") and not rec.get("document"):
            raise InputError(f"{where}: a {rec['kind']} query needs a 'document'")
        if not rec["prompt"].strip():
            raise InputError(f"{where}: empty prompt")
        queries.append(Query(id=rec["id"], kind=rec["kind"], prompt=rec["prompt"],
                             system=rec.get("system"), document=rec.get("document"),
                             reference=rec.get("reference"), turns=list(turns), meta=dict(meta)))
    if suite_name is None:
        raise InputError(f"suite {path.name} is empty")
    if kinds is not None:
        kinds = set(kinds)
        bad = kinds - set(QUERY_KINDS)
        if bad:
            raise InputError(f"unknown query kind(s) {', '.join(sorted(bad))}; valid: {', '.join(QUERY_KINDS)}")
        queries = [q for q in queries if q.kind in kinds]
        if "prose" not in kinds:
            prose = prose_id = None
    if ids is not None:
        ids = list(ids)
        missing = [i for i in ids if i not in seen]
        if missing:
            raise InputError(f"unknown query id(s) {', '.join(missing)} in suite {suite_name}")
        queries = [q for q in queries if q.id in ids]
        if prose_id not in ids:
            prose = prose_id = None
    return Suite(name=suite_name, path=path, queries=queries, prose=prose, prose_id=prose_id)


# ---- measurement helpers -----------------------------------------------------------------------

def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, else the process RSS sampled by a
    thread every few ms (noisy and dominated by the weights, as METHODS.md warns)."""

    def __init__(self, device: Any, every: float = 0.005) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.every = every
        self.peak: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> None:
        import psutil

        self.peak = max(self.peak or 0, psutil.Process().memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._read()  # a block shorter than the first tick still gets a figure
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._read()


def first_divergence(a: list[int], b: list[int]) -> Optional[int]:
    """Index of the first differing token (a length difference counts); None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def kl_stats(ref_lp: torch.Tensor, lp: torch.Tensor) -> tuple[Optional[float], Optional[float]]:
    """Mean and max per-position KL(ref || method) in nats; ≥ 0 (tiny negatives from rounding
    are clamped)."""
    if ref_lp.numel() == 0 or lp.numel() == 0:
        return None, None
    n = min(ref_lp.shape[0], lp.shape[0])
    kl = (ref_lp[:n].exp() * (ref_lp[:n] - lp[:n])).sum(-1).clamp_min(0.0)
    return float(kl.mean()), float(kl.max())


def contains(text: str, reference: Optional[str]) -> Optional[bool]:
    if not reference:
        return None
    norm = lambda s: " ".join(s.lower().replace(".", " ").replace(",", " ").split())  # noqa: E731
    return norm(reference) in norm(text)


def env_info(lm: Any) -> dict:
    import transformers

    dev = lm.torch_device
    return {"device": str(dev), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(terse=True),
            "cpus": os.cpu_count() or 0, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(dev) if getattr(dev, "type", "") == "cuda" else None}


def model_info(lm: Any) -> dict:
    return {"id": str(lm.name), "dtype": str(lm.dtype)}


# ---- the bench ---------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    methods: list[str]
    suite: str = "core-v1"
    repeats: int = 5
    max_new_tokens: int = 32
    seed: int = 0
    warmup: bool = True
    kinds: Optional[list[str]] = None
    query_ids: Optional[list[str]] = None
    params: dict = field(default_factory=dict)  # method name -> params override

    def validate(self) -> None:
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InputError(f"repeats must be an integer >= 1 (got {self.repeats!r})")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise InputError(f"max_new_tokens must be 1..4096 (got {self.max_new_tokens!r})")
        self.methods = parse_methods(",".join(self.methods))


@dataclass
class BenchSummary:
    run_id: str
    out: Path
    written: int = 0
    skipped: int = 0
    errors: int = 0
    cancelled: bool = False
    loadavg_start: list = field(default_factory=list)
    loadavg_end: list = field(default_factory=list)


@dataclass
class _Ref:
    """The baseline's greedy continuation of one query and its teacher-forced log-probs."""

    ids: list[int]
    logprobs: torch.Tensor


def _key(model_id: str, method: str, params: dict, mnt: int, prompt: str, repeat: int,
         suite: str = "", seed: int = 0) -> tuple:
    """What makes a record the same measurement: a rerun skips it (suite and seed included, so
    another suite reusing a prompt id, or another seed, is measured anew)."""
    return (model_id, method, json.dumps(params, sort_keys=True, default=str), mnt, prompt, repeat,
            suite, int(seed))


def existing_keys(out: Path) -> set[tuple]:
    if not out.exists():
        return set()
    recs, _ = read_records(out)
    return {_key(r["model"]["id"], r["method"], r["params"], r["max_new_tokens"], r["prompt_id"],
                 r["repeat"], r.get("suite", ""), r.get("seed", 0)) for r in recs if r["status"] == "ok"}


def _ensure_newline(out: Path) -> None:
    """After an interrupted write the file may end mid-line: start the next record on its own."""
    if out.exists() and out.stat().st_size:
        with open(out, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
        if last != b"\n":
            append_line(out, "")


def run_bench(lm: Any, cfg: BenchConfig, out: Path | str, **kw: Any) -> BenchSummary:
    """``_run_bench`` holding the runs file's lock (engine.locks): a second run appending to the
    same file stops at once, naming the holder, instead of measuring the same grid beside it."""
    from engine.locks import FileLock

    with FileLock(out, f"runs file {out}"):
        return _run_bench(lm, cfg, out, **kw)


def _run_bench(lm: Any, cfg: BenchConfig, out: Path | str, *, progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelToken] = None) -> BenchSummary:
    """Run the grid, appending a record per (method, query, repeat) to ``out`` as each finishes.
    A cancel stops after the current measurement; finished records stay."""
    cfg.validate()
    suite = load_suite(cfg.suite, kinds=cfg.kinds, ids=cfg.query_ids)
    if not suite.queries and suite.prose is None:
        raise InputError("the suite selection has no queries")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a directory")
    methods: list[Method] = [make_method(n, **cfg.params.get(n, {})) for n in cfg.methods]
    summary = BenchSummary(run_id=uuid.uuid4().hex[:12], out=out, loadavg_start=loadavg())
    done = existing_keys(out)
    _ensure_newline(out)
    base_env = {**env_info(lm), "loadavg_start": summary.loadavg_start}
    minfo = model_info(lm)
    torch.manual_seed(cfg.seed)
    ref_method = make_method("baseline")
    prepared: dict[str, float] = {}
    prepare_err: dict[str, str] = {}
    quality_cache: dict[tuple[str, str], dict] = {}
    warmed: set[str] = set()

    def key(m: Method, qid: str, r: int) -> tuple:
        return _key(minfo["id"], m.name, m.params, cfg.max_new_tokens, qid, r, suite.name, cfg.seed)

    grid = [(q, r) for q in suite.queries for r in range(cfg.repeats)]
    prose_ms = [m for m in methods if m.model_changing or m.name == "baseline"]
    total = len(grid) * len(methods) + (len(prose_ms) if suite.prose else 0)
    step = 0

    def record(m: Method, q_id: str, kind: str, r: int, cost: dict, quality: dict, status: str,
               message: str = "") -> None:
        rec = {"schema": SCHEMA_VERSION, "run_id": summary.run_id,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "suite": suite.name, "prompt_id": q_id, "kind": kind, "repeat": r,
               "method": m.name, "label": m.label, "params": dict(m.params),
               "model_changing": bool(m.model_changing), "speed_note": m.speed_note,
               "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "model": minfo,
               "env": {**base_env, "loadavg": loadavg()}, "cost": cost, "quality": quality,
               "status": status, "message": message}
        errs = validate_record(rec)
        if errs:  # a bug in a method's figures must not write an invalid record
            rec.update(status="error", message="invalid record: " + "; ".join(errs[:3]))
        append_line(out, json.dumps(rec, ensure_ascii=False, default=_json_safe))
        summary.written += 1
        if rec["status"] == "error":
            summary.errors += 1

    def enter(m: Method) -> None:
        """Apply a method's model changes (first time: timed as its prepare/calibration cost)."""
        if m.name in prepare_err:
            raise RuntimeError(prepare_err[m.name])
        try:
            t = m.prepare(lm, cancel=cancel)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 — remembered: a failing calibration is not rerun
            prepare_err[m.name] = f"prepare failed: {type(e).__name__}: {e}"
            raise RuntimeError(prepare_err[m.name]) from e
        if m.name not in prepared:
            prepared[m.name] = float(t or 0.0)

    def leave(m: Method) -> None:
        m.restore(lm)

    def quality_for(m: Method, q: Query, ref: _Ref, out_ids: list[int], text: str) -> dict:
        qk = (m.name, q.id)
        if qk not in quality_cache:
            lp = m.teacher_forced_logprobs(lm, q, ref.ids, cancel=cancel)
            kl_mean, kl_max = kl_stats(ref.logprobs, lp)
            agree = None
            if lp.numel() and ref.ids:
                n = min(lp.shape[0], len(ref.ids))
                agree = float((lp[:n].argmax(-1).cpu() == torch.tensor(ref.ids[:n])).float().mean())
            ref_nll = m.answer_nll(lm, q, q.reference, cancel=cancel) if q.reference else None
            quality_cache[qk] = {"kl_mean": kl_mean, "kl_max": kl_max, "top1_agree": agree,
                                 "ref_nll": ref_nll, "ref_tokens": len(ref.ids)}
        qd = dict(quality_cache[qk])
        qd["first_divergence"] = first_divergence(m.base_token_ids(out_ids), ref.ids)
        qd["contains"] = contains(text, q.reference)
        if isinstance(q.meta.get("depth"), (int, float)):  # where the planted fact sits (0 … 1)
            qd["depth"] = float(q.meta["depth"])
        return qd

    def measure(m: Method, q: Query, r: int, ref: _Ref) -> None:
        nonlocal step
        step += 1
        if key(m, q.id, r) in done:
            summary.skipped += 1
            return
        report(progress, "bench", step, total, f"{m.name} · {q.id} · repeat {r + 1}/{cfg.repeats}",
               method=m.name, prompt=q.id, repeat=r)
        entered = False
        try:
            enter(m)
            entered = True
            if m.name not in warmed and cfg.warmup:
                m.run(lm, q, min(cfg.max_new_tokens, 8), cancel=cancel)  # discarded warm-up
                warmed.add(m.name)
            with PeakMemory(lm.torch_device) as mem:
                res = m.run(lm, q, cfg.max_new_tokens, cancel=cancel)
            cost = {k: res.cost.get(k) for k in COST_KEYS}
            cost.update({k: v for k, v in res.cost.items() if k not in cost})
            cost["rss_peak_bytes"] = mem.peak  # the key predates GPU runs: its source is named next
            cost["peak_source"] = "cuda_max_memory_allocated" if mem.cuda else "rss_sampled_5ms"
            cost["aux_s"] = float(res.cost.get("aux_s") or 0.0)
            cost["prepare_s"] = prepared.get(m.name, 0.0)
            qd = quality_for(m, q, ref, res.token_ids, res.text)
            qd["extra"] = res.extra
            qd["output"] = res.text[:500]
            record(m, q.id, q.kind, r, cost, qd, "ok")
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 — one failing method/query must not stop the run
            record(m, q.id, q.kind, r, {}, {}, "error", f"{type(e).__name__}: {e}"[:2000])
        finally:
            if entered:
                leave(m)

    try:
        for qi, q in enumerate(suite.queries):
            check(cancel)
            report(progress, "bench", step, total, f"reference (baseline greedy) for {q.id}")
            need = [(m, r) for r in range(cfg.repeats) for m in methods if key(m, q.id, r) not in done]
            if not need:
                step += cfg.repeats * len(methods)
                summary.skipped += cfg.repeats * len(methods)
                continue
            try:
                ref_out = ref_method.run(lm, q, cfg.max_new_tokens, cancel=cancel)
                ref = _Ref(ref_out.token_ids, ref_method.teacher_forced_logprobs(
                    lm, q, ref_out.token_ids, cancel=cancel))
            except (Cancelled, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001
                for r in range(cfg.repeats):
                    for m in methods:
                        step += 1
                        if key(m, q.id, r) not in done:
                            record(m, q.id, q.kind, r, {}, {}, "error",
                                   f"baseline reference failed: {type(e).__name__}: {e}"[:2000])
                continue
            for r in range(cfg.repeats):
                k = (r + qi) % len(methods)
                for m in methods[k:] + methods[:k]:  # interleaved, rotating order
                    check(cancel)
                    measure(m, q, r, ref)
        if suite.prose is not None:
            ref_bpb = ref_method.nll_bits_per_byte(lm, suite.prose, cancel=cancel)
            for m in prose_ms:
                step += 1
                if key(m, suite.prose_id, 0) in done:
                    summary.skipped += 1
                    continue
                report(progress, "bench", step, total, f"{m.name} · held-out prose")
                entered = False
                try:
                    enter(m)
                    entered = True
                    t0 = time.perf_counter()
                    res = m.nll_bits_per_byte(lm, suite.prose, cancel=cancel)
                    dt = time.perf_counter() - t0
                    qd = dict(res or {})
                    qd["baseline"] = ref_bpb
                    record(m, suite.prose_id, "prose", 0,
                           {"total_s": dt, "prepare_s": prepared.get(m.name, 0.0)}, qd, "ok")
                except (Cancelled, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001
                    record(m, suite.prose_id, "prose", 0, {}, {}, "error", f"{type(e).__name__}: {e}"[:2000])
                finally:
                    if entered:
                        leave(m)
    except (Cancelled, KeyboardInterrupt) as e:
        summary.cancelled = True
        if isinstance(e, KeyboardInterrupt):
            summary.loadavg_end = loadavg()
            raise
    finally:
        for m in methods:
            try:
                m.restore(lm)
            except Exception:  # noqa: BLE001
                pass
    summary.loadavg_end = loadavg()
    report(progress, "bench", step, total, "cancelled" if summary.cancelled else "done",
           written=summary.written, skipped=summary.skipped, errors=summary.errors)
    return summary


def _json_safe(o: Any) -> Any:
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    return str(o)


__all__ = ["BenchConfig", "BenchSummary", "SCHEMA", "SCHEMA_VERSION", "Suite", "load_suite",
           "read_records", "run_bench", "validate_record", "first_divergence", "kl_stats"]
