"""The comparison-dashboard harness: run methods over a versioned query suite and append one
complete JSONL record per (method, query, repeat).

Measurement rules (docs/bench-methods.md): one discarded warm-up per method, >= 1 (default 5)
repeats, methods interleaved within each repeat (their order rotates so no method always runs
first), the load average recorded at the start of the bench and with every record. Quality is
measured against the baseline's greedy continuation, which is recomputed for every query on the
unmodified model (so it exists even when "baseline" is not among the methods):

- fidelity: teacher-forced KL(baseline || method) in nats/token on that continuation, top-1
  agreement, and the first greedy divergence of the method's own output;
- task: reference-answer NLL after the method's prompt, and whether the output contains it;
- model-changing methods: NLL / perplexity / bits per byte on the held-out prose.

Greedy quality is deterministic, so it is computed once per (method, query) and copied into each
repeat's record; timings are per repeat. Storage is append-only; aggregates are computed at read
time (``engine/bench/report.py``). The suite parser lives in ``suite.py``, the measurement
primitives (peak memory, KL, divergence, environment) in ``measure.py``. A rerun with the same output file resumes: records already
present with status "ok" for the same (model, method, params, max_new_tokens, prompt, repeat)
are skipped; failed ones are retried.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.atomic import append_line
from engine.bench.aggregate import row_key
from engine.bench.config import BenchConfig
from engine.bench.measure import (PeakMemory, contains, env_info, first_divergence, kl_stats, loadavg,
                                  model_info, ref_recall, rouge_l)
from engine.bench.memory import HighWater
from engine.bench.methods import make_method
from engine.bench.methods.base import Method, Query
from engine.bench.records import COST_KEYS, SCHEMA_VERSION, read_records, validate_record
from engine.bench.suite import load_suite
from engine.errors import InputError, StorageError
from engine.progress import Cancelled, CancelToken, ProgressFn, check, report

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


# ---- the bench ---------------------------------------------------------------------------------

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


def run_bench(lm: LoadedModel, cfg: BenchConfig, out: Path | str, **kw: Any) -> BenchSummary:
    """``_run_bench`` holding the runs file's lock (engine.locks): a second run appending to the
    same file stops at once, naming the holder, instead of measuring the same grid beside it."""
    from engine.locks import FileLock

    with FileLock(out, f"runs file {out}"):
        return _run_bench(lm, cfg, out, **kw)


def _run_bench(lm: LoadedModel, cfg: BenchConfig, out: Path | str, *, progress: Optional[ProgressFn] = None,
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
    return _Bench(lm, cfg, suite, out, progress, cancel).run()


class _Bench:
    """One bench run's state: the methods, what the runs file already holds, the per-method
    preparation (timed once), the greedy quality per (method, query), and the step count."""

    def __init__(self, lm: LoadedModel, cfg: BenchConfig, suite: Any, out: Path,
                 progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> None:
        self.lm, self.cfg, self.suite, self.out = lm, cfg, suite, out
        self.progress, self.cancel = progress, cancel
        self.methods: list[Method] = [make_method(n, **p) for n, p in cfg.method_specs()]
        for m in self.methods:
            m.use_suite(suite)  # before any key is made: it may set the method's parameters
        self.summary = BenchSummary(run_id=uuid.uuid4().hex[:12], out=out, loadavg_start=loadavg())
        self.done = existing_keys(out)
        _ensure_newline(out)
        self.base_env = {**env_info(lm), "loadavg_start": self.summary.loadavg_start}
        self.minfo = model_info(lm)
        torch.manual_seed(cfg.seed)
        self.ref_method = make_method("baseline")
        self.prepared: dict[str, float] = {}
        self.prepare_err: dict[str, str] = {}
        self.quality_cache: dict[tuple[str, str], dict] = {}
        self.warmed: set[str] = set()
        self.prose_ms = [m for m in self.methods if m.model_changing or m.name == "baseline"]
        self.total = (len(suite.queries) * cfg.repeats * len(self.methods)
                      + (len(self.prose_ms) if suite.prose else 0))
        self.step = 0

    @staticmethod
    def mkey(m: Method) -> str:
        """One method instance (a sweep runs one method at several parameter values)."""
        return row_key(m.name, m.params)

    def key(self, m: Method, qid: str, r: int) -> tuple:
        return _key(self.minfo["id"], m.name, m.params, self.cfg.max_new_tokens, qid, r,
                    self.suite.name, self.cfg.seed)

    def report(self, message: str, **metrics: Any) -> None:
        report(self.progress, "bench", self.step, self.total, message, **metrics)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> BenchSummary:
        summary = self.summary
        try:
            for qi, q in enumerate(self.suite.queries):
                check(self.cancel)
                self.query(qi, q)
            if self.suite.prose is not None:
                self.prose()
        except (Cancelled, KeyboardInterrupt) as e:
            summary.cancelled = True
            if isinstance(e, KeyboardInterrupt):
                summary.loadavg_end = loadavg()
                raise
        finally:
            for m in self.methods:
                try:
                    m.restore(self.lm)
                except Exception:  # noqa: BLE001
                    pass
        summary.loadavg_end = loadavg()
        self.report("cancelled" if summary.cancelled else "done", written=summary.written,
                    skipped=summary.skipped, errors=summary.errors)
        return summary

    def query(self, qi: int, q: Query) -> None:
        """Every (method, repeat) of one query, after its baseline reference; methods are
        interleaved within a repeat and their order rotates."""
        cfg, methods = self.cfg, self.methods
        self.report(f"reference (baseline greedy) for {q.id}")
        need = [(m, r) for r in range(cfg.repeats) for m in methods if self.key(m, q.id, r) not in self.done]
        if not need:
            self.step += cfg.repeats * len(methods)
            self.summary.skipped += cfg.repeats * len(methods)
            return
        try:
            ref = self.reference(q)
        except (Cancelled, KeyboardInterrupt, StorageError):
            raise
        except Exception as e:  # noqa: BLE001
            for r in range(cfg.repeats):
                for m in methods:
                    self.step += 1
                    if self.key(m, q.id, r) not in self.done:
                        self.record(m, q.id, q.kind, r, {}, {}, "error",
                                    f"baseline reference failed: {type(e).__name__}: {e}"[:2000])
            return
        for r in range(cfg.repeats):
            k = (r + qi) % len(methods)
            for m in methods[k:] + methods[:k]:  # interleaved, rotating order
                check(self.cancel)
                self.measure(m, q, r, ref)

    def reference(self, q: Query) -> _Ref:
        out = self.ref_method.run(self.lm, q, self.cfg.max_new_tokens, cancel=self.cancel)
        return _Ref(out.token_ids, self.ref_method.teacher_forced_logprobs(
            self.lm, q, out.token_ids, cancel=self.cancel))

    # -- one measurement --------------------------------------------------------------------
    def measure(self, m: Method, q: Query, r: int, ref: _Ref) -> None:
        cfg, lm = self.cfg, self.lm
        self.step += 1
        if self.key(m, q.id, r) in self.done:
            self.summary.skipped += 1
            return
        self.report(f"{self.mkey(m)} · {q.id} · repeat {r + 1}/{cfg.repeats}", method=self.mkey(m),
                    prompt=q.id, repeat=r)
        entered = False
        try:
            self.enter(m)
            entered = True
            if self.mkey(m) not in self.warmed and cfg.warmup:
                m.run(lm, q, min(cfg.max_new_tokens, 8), cancel=self.cancel)  # discarded warm-up
                self.warmed.add(self.mkey(m))
            with HighWater(lm.torch_device) as hw, PeakMemory(lm.torch_device) as mem:
                res = m.run(lm, q, cfg.max_new_tokens, cancel=self.cancel,
                            fixed_length=cfg.fixed_length)
            cost = {k: res.cost.get(k) for k in COST_KEYS}
            cost.update({k: v for k, v in res.cost.items() if k not in cost})
            cost["rss_peak_bytes"] = mem.peak  # the key predates GPU runs: its source is named next
            cost["peak_source"] = "cuda_max_memory_allocated" if mem.cuda else "rss_sampled_5ms"
            cost["mem_hwm_delta_bytes"] = hw.delta
            cost["hwm_source"] = hw.source
            cost["aux_s"] = float(res.cost.get("aux_s") or 0.0)
            cost["prepare_s"] = self.prepared.get(self.mkey(m), 0.0)
            qd = self.quality_for(m, q, ref, res.token_ids, res.text)
            qd["extra"] = res.extra
            qd["output"] = res.text  # the whole answer (at most max_new_tokens)
            if r == 0:  # what the method fed the model, once per query
                qd["input"] = self.input_text(m, q)
            self.record(m, q.id, q.kind, r, cost, qd, "ok")
        except (Cancelled, KeyboardInterrupt, StorageError):
            raise
        except Exception as e:  # noqa: BLE001 — one failing method/query must not stop the run
            self.record(m, q.id, q.kind, r, {}, {}, "error", f"{type(e).__name__}: {e}"[:2000])
        finally:
            if entered:
                m.restore(lm)

    def enter(self, m: Method) -> None:
        """Apply a method's model changes (first time: timed as its prepare/calibration cost)."""
        mk = self.mkey(m)
        if mk in self.prepare_err:
            raise RuntimeError(self.prepare_err[mk])
        try:
            # a first calibration can take minutes: it reports its own progress (phase
            # "calibrate") and stops on the bench's cancel
            t = m.prepare(self.lm, progress=self.progress, cancel=self.cancel)
        except (Cancelled, KeyboardInterrupt, StorageError):
            raise
        except Exception as e:  # noqa: BLE001 — remembered: a failing calibration is not rerun
            self.prepare_err[mk] = f"prepare failed: {type(e).__name__}: {e}"
            raise RuntimeError(self.prepare_err[mk]) from e
        if mk not in self.prepared:
            self.prepared[mk] = float(t or 0.0)

    def input_text(self, m: Method, q: Query) -> Optional[str]:
        """The prompt as this method fed it (pruned, merged), decoded with the template, so the
        report can show what went in; None when it cannot be rendered again."""
        try:
            ids = m.base_token_ids(m.render_prompt(self.lm, q))
            return self.lm.tokenizer.decode(ids)
        except Exception:  # noqa: BLE001 — the record stays valid without it
            return None

    def quality_for(self, m: Method, q: Query, ref: _Ref, out_ids: list[int], text: str) -> dict:
        qk = (self.mkey(m), q.id)
        if qk not in self.quality_cache:
            lm, cancel = self.lm, self.cancel
            # only positions where both tokenizations predict the same next token are compared
            # (all of them unless the method has its own vocabulary: phrase merge, all-combined)
            lp, pos = m.fidelity_logprobs(lm, q, ref.ids, cancel=cancel)
            pos = [p for p in pos[:lp.shape[0]] if p < len(ref.ids)]
            lp = lp[:len(pos)]
            ref_lp = ref.logprobs[pos] if pos else ref.logprobs[:0]
            kl_mean, kl_max = kl_stats(ref_lp, lp)
            agree = None
            if lp.numel() and pos:
                want = torch.tensor([ref.ids[p] for p in pos])
                agree = float((lp.argmax(-1).cpu() == want).float().mean())
            ref_nll = m.answer_nll(lm, q, q.reference, cancel=cancel) if q.reference else None
            self.quality_cache[qk] = {"kl_mean": kl_mean, "kl_max": kl_max, "top1_agree": agree,
                                      "ref_nll": ref_nll, "ref_tokens": len(ref.ids),
                                      "kl_positions": len(pos)}
        qd = dict(self.quality_cache[qk])
        qd["first_divergence"] = first_divergence(m.base_token_ids(out_ids), ref.ids)
        qd["contains"] = contains(text, q.reference)
        qd["ref_recall"] = ref_recall(text, q.reference)
        if q.meta.get("task") == "summary":  # the seed's summarization queries
            qd["rouge_l"] = rouge_l(text, q.reference)
        if isinstance(q.meta.get("depth"), (int, float)):  # where the planted fact sits (0 … 1)
            qd["depth"] = float(q.meta["depth"])
        return qd

    # -- the held-out prose -----------------------------------------------------------------
    def prose(self) -> None:
        """Perplexity / bits per byte on the held-out prose, for model-changing methods."""
        suite, lm = self.suite, self.lm
        ref_bpb = self.ref_method.nll_bits_per_byte(lm, suite.prose, cancel=self.cancel)
        for m in self.prose_ms:
            self.step += 1
            if self.key(m, suite.prose_id, 0) in self.done:
                self.summary.skipped += 1
                continue
            self.report(f"{m.name} · held-out prose")
            entered = False
            try:
                self.enter(m)
                entered = True
                t0 = time.perf_counter()
                res = m.nll_bits_per_byte(lm, suite.prose, cancel=self.cancel)
                dt = time.perf_counter() - t0
                qd = dict(res or {})
                qd["baseline"] = ref_bpb
                self.record(m, suite.prose_id, "prose", 0,
                            {"total_s": dt, "prepare_s": self.prepared.get(self.mkey(m), 0.0)}, qd, "ok")
            except (Cancelled, KeyboardInterrupt, StorageError):
                raise
            except Exception as e:  # noqa: BLE001
                self.record(m, suite.prose_id, "prose", 0, {}, {}, "error", f"{type(e).__name__}: {e}"[:2000])
            finally:
                if entered:
                    m.restore(lm)

    # -- the runs file ----------------------------------------------------------------------
    def record(self, m: Method, q_id: str, kind: str, r: int, cost: dict, quality: dict,
               status: str, message: str = "") -> None:
        """Append one complete record (an invalid one is written as an error, never as is)."""
        cfg, summary = self.cfg, self.summary
        rec = {"schema": SCHEMA_VERSION, "run_id": summary.run_id,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "suite": self.suite.name, "prompt_id": q_id, "kind": kind, "repeat": r,
               "method": m.name, "label": m.label, "params": dict(m.params),
               "model_changing": bool(m.model_changing), "speed_note": m.speed_note,
               "simplification": m.simplification,
               "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "model": self.minfo,
               "env": {**self.base_env, "loadavg": loadavg()}, "cost": cost, "quality": quality,
               "status": status, "message": message}
        errs = validate_record(rec)
        if errs:  # a bug in a method's figures must not write an invalid record
            rec.update(status="error", message="invalid record: " + "; ".join(errs[:3]))
        append_line(self.out, json.dumps(rec, ensure_ascii=False, default=_json_safe))
        summary.written += 1
        if rec["status"] == "error":
            summary.errors += 1


def _json_safe(o: Any) -> Any:
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    return str(o)


__all__ = ["BenchConfig", "BenchSummary", "existing_keys", "run_bench"]
