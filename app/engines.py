"""The engine entry points the app uses, as one replaceable object.

The runner calls these methods in worker threads (``progress=`` and ``cancel=`` keyword args, as
every engine function). Tests inject a fake with the same signatures (or ``Engine(lm=…)`` with
the tiny model), so the app is tested without loading the bundled model. Engine modules are
imported inside the methods: importing the TUI must not import torch.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.progress import CancelToken, ProgressFn, check, report
from engine.treesearch.versus_greedy import TreeRun  # torch-free; the search screen's result

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SPEED_PROMPT = "Count from one to twenty: one, two,"
SPEED_TOKENS = 8


def module_available(name: str) -> bool:
    """True when ``name`` can be imported (checked without importing it: no torch at startup)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class SpeedResult:
    tok_s: float
    ttft_s: float
    tokens: int


def judge_loader(cancel: Optional[CancelToken]) -> Any:
    """Loads a model-backed judge's classifier (never the attacked model, even when injected)."""

    def load(spec: str) -> Any:
        from engine.lm.model import load_model

        return load_model(spec, cancel=cancel)

    return load


@dataclass
class DatasetOutcome:
    """What a dataset run or a judging pass hands back to the attack screen."""

    summary: Any = None             # engine.advtok.evalrun.RunSummary (a run)
    judged: Any = None              # engine.advtok.evalrun.JudgedFile (a judging pass)
    report: Any = None              # engine.advtok.asr_report.AsrReport, None after a stop
    problems: list[str] = field(default_factory=list)   # the benchmark's bad rows
    records: list[dict[str, Any]] = field(default_factory=list)  # every finished row (drill-down)


class Engine:
    """The real engine. ``lm`` may be injected (tests, embedding); then ``load_model`` returns it."""

    def __init__(self, lm: Optional[LoadedModel] = None) -> None:
        self.injected = lm

    # -- model --------------------------------------------------------------------------------
    def load_model(self, spec: str, device: str = "auto", dtype: str = "auto",
                   trust_remote_code: bool = False, engine_path: str = "fast", *,
                   progress: Optional[ProgressFn] = None,
                   cancel: Optional[CancelToken] = None) -> Any:
        if self.injected is not None:
            report(progress, "load", 1, 1, f"using {self.injected.name}")
            lm = self.injected
        else:
            # the first load imports torch and transformers (seconds on a busy CPU): say so
            report(progress, "load", 0, None, "importing torch and transformers…")
            import torch  # noqa: F401
            import transformers  # noqa: F401

            check(cancel)
            from engine.lm.model import load_model
            from engine.lm.threads import apply

            apply()  # --threads, else cores / local processes (engine/lm/threads.py)

            lm = load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                            progress=progress, cancel=cancel)
        lm.engine_path = engine_path
        return lm

    def measure_speed(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                      cancel: Optional[CancelToken] = None) -> SpeedResult:
        """A short greedy decode (8 tokens) to learn this machine's tok/s for the timeouts."""
        from engine.lm.generate import generate
        from engine.lm.config import SamplingConfig

        ids = list(lm.tokenizer.encode(SPEED_PROMPT, add_special_tokens=False))
        cfg = SamplingConfig(max_new_tokens=SPEED_TOKENS, temperature=0.0)
        # eos must not end the measurement early: a tiny random model may pick it at once
        saved = lm.eos_ids
        lm.eos_ids = []
        try:
            res, _ = generate(lm, ids, cfg, progress=progress, cancel=cancel)
        finally:
            lm.eos_ids = saved
        check(cancel)
        return SpeedResult(tok_s=res.decode_tok_s, ttft_s=res.ttft_s, tokens=res.new_tokens)

    def set_engine_path(self, lm: LoadedModel, path: str) -> None:
        lm.engine_path = path

    # -- vocabulary ---------------------------------------------------------------------------
    def vocab_available(self) -> bool:
        return module_available("engine.advtok.vocab")

    def load_vocab(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                   cancel: Optional[CancelToken] = None) -> Any:
        from engine.advtok.vocab import load_vocab

        return load_vocab(lm.tokenizer, progress=progress, cancel=cancel)

    # -- chat -----------------------------------------------------------------------------------
    def new_chat(self, lm: LoadedModel, system: Optional[str]) -> Any:
        from engine.lm.chat import ChatSession

        return ChatSession(lm, system=system)

    def chat_send(self, session: Any, text: str, sampling: Any, *,
                  on_token: Any = None, progress: Optional[ProgressFn] = None,
                  cancel: Optional[CancelToken] = None, observe: Any = None) -> Any:
        cfg = sampling
        session.sampling = cfg  # the export then records the settings actually used
        return session.send(text, on_token=on_token, progress=progress, cancel=cancel,
                            sampling=cfg, observe=observe)

    def chat_regenerate(self, session: Any, sampling: Any, *, turn: Optional[int] = None,
                        on_token: Any = None, progress: Optional[ProgressFn] = None,
                        cancel: Optional[CancelToken] = None, observe: Any = None) -> Any:
        """A new answer to turn ``turn``'s message (default the last), kept beside the old
        one as a variant (current sampling)."""
        cfg = sampling
        session.sampling = cfg
        return session.regenerate(turn, on_token=on_token, progress=progress, cancel=cancel,
                                  sampling=cfg, observe=observe)

    # -- AdvTok (attack screen) -----------------------------------------------------------------
    def attack(self, lm: LoadedModel, fields: dict[str, Any], vocab: Any = None, *,
               progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> Any:
        """One AdvTok run from the attack screen's validated fields (``AttackConfig`` field
        names; ``system`` None = the reference's default system prompt). The engine validates
        the config again; ``vocab`` is the app's background-loaded vocabulary when ready."""
        from engine.advtok.search import DEFAULT_SYSTEM, AttackConfig, run_attack

        f = dict(fields)
        if f.get("system") is None:
            f["system"] = DEFAULT_SYSTEM
        return run_attack(lm, AttackConfig(**f), progress=progress, cancel=cancel, vocab=vocab)

    # -- AdvTok dataset runs (attack screen, dataset mode) ---------------------------------------
    def read_benchmark(self, path: str, default_response: str = "Sure, here is") -> Any:
        """The benchmark file as the dataset run reads it (layout, rows, "line N: …" problems)."""
        from engine.advtok.datasets import read_benchmark

        return read_benchmark(path, None, default_response)

    def dataset_run(self, lm: LoadedModel, bench_path: str, out: str, fields: dict[str, Any],
                    judges: str, *, on_row: Any = None, progress: Optional[ProgressFn] = None,
                    cancel: Optional[CancelToken] = None,
                    judge_settings: Any = None) -> "DatasetOutcome":
        """Every pending row of the benchmark through ``engine.advtok.evalrun.run_rows`` (the
        same call as ``attack --dataset``: rows already in ``out`` are skipped, a settings
        mismatch is refused with InputError), then the ΔASR report of the whole results file
        (not computed after a stop: the stopped run's rows stay on disk for a re-Run)."""
        from engine.advtok.datasets import system_for
        from engine.advtok.evalrun import run_rows
        from engine.advtok.judges import make_judges
        from engine.advtok.search import DEFAULT_SYSTEM, AttackConfig

        bench = self.read_benchmark(bench_path)
        if not bench.rows:
            from engine.errors import InputError

            raise InputError(f"{bench_path}: no usable row ({len(bench.problems)} problem(s))")
        f = dict(fields)
        system = f.pop("system", None) or DEFAULT_SYSTEM
        built = make_judges(judges, loader=judge_loader(cancel), settings=judge_settings)

        def cfg(row: Any) -> Any:
            return AttackConfig(request=row.request, response=row.response,
                                system=system_for(row, system), **f).validate()

        summ = run_rows(lm, bench, cfg, built, out, cancel=cancel, on_row=on_row,
                        progress=progress, system=system)
        out_ = DatasetOutcome(summary=summ, problems=list(bench.problems))
        if not summ.interrupted:
            out_.records, out_.report = self.asr_report(out)
        return out_

    def judge_results(self, results: str, judges: str, out: Optional[str] = None, *,
                      progress: Optional[ProgressFn] = None,
                      cancel: Optional[CancelToken] = None,
                      judge_settings: Any = None) -> "DatasetOutcome":
        """``attack judge``: add the verdicts of ``judges`` (with ``judge_settings``, a
        DatasetRunConfig: rubric tokens, ShieldGemma policies) to a results file (in place
        under its locks, or into ``out``), then the ΔASR report of what was written."""
        from engine.advtok.evalrun import rejudge_file
        from engine.advtok.judges import make_judges

        res = rejudge_file(results, lambda: make_judges(
            judges, loader=judge_loader(cancel), settings=judge_settings), out,
            cancel=cancel, progress=progress)
        recs, rep = self.asr_report(str(res.dest))
        return DatasetOutcome(judged=res, report=rep, records=recs)

    def record_lattice(self, lm: LoadedModel, rec: dict[str, Any], *, vocab: Any = None) -> Any:
        """A results row's canonical and adversarial paths rebuilt with ``lm``'s tokenizer
        (engine.advtok.record_lattice; RecordLatticeError when it was made with another)."""
        from engine.advtok.record_lattice import record_paths

        return record_paths(lm, rec, vocab=vocab)

    def asr_report(self, results: str) -> tuple[list[dict[str, Any]], Any]:
        """The finished rows of a results file (and its shards) and their ΔASR report, as
        ``attack report`` builds it."""
        from engine.advtok.asr_report import build_report
        from engine.advtok.records import read_results

        recs = read_results(results).records
        return recs, build_report(recs)

    # -- bench grid (dashboard screen) --------------------------------------------------------
    def bench(self, lm: LoadedModel, cfg: dict[str, Any], out: str, *,
              progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> Any:
        """Run the dashboard's validated grid (``BenchConfig`` field names), appending records to
        ``out``; returns the ``BenchSummary`` (finished records stay on cancel)."""
        from engine.bench.harness import BenchConfig, run_bench

        return run_bench(lm, BenchConfig(**cfg), out, progress=progress, cancel=cancel)

    def bench_export(self, runs: str, folder: str, *, progress: Optional[ProgressFn] = None,
                     cancel: Optional[CancelToken] = None) -> list[str]:
        """Aggregate the runs JSONL and write the PNGs, the CSV, the aggregate as the one JSON
        export envelope (engine/export.py; finished_at = when the runs file was last written) and
        a copy of the JSONL itself (the records the figures come from) into ``folder``; every file
        is written atomically."""
        from pathlib import Path

        from engine.atomic import write_bytes
        from engine.bench.plots import write_pngs
        from engine.bench.report import load_report, write_csv
        from engine.export import job_document, write_job_json

        stem = Path(runs).stem  # the default runs file is bench-runs.jsonl: no "bench-bench-runs"
        stem = stem if stem == "bench" or stem.startswith("bench-") else f"bench-{stem}"
        report(progress, "bench", 0, 3, "aggregating")
        rep = load_report(runs)
        check(cancel)
        report(progress, "bench", 1, 3, "writing PNGs")
        paths = [str(p) for p in write_pngs(rep, folder, prefix=stem)]
        check(cancel)
        paths.append(str(write_csv(rep, Path(folder) / f"{stem}.csv")))
        doc = job_document("bench", rep, model=rep.model.get("id"),
                           settings={"runs": str(runs), "suite": rep.suite,
                                     "max_new_tokens": rep.max_new_tokens},
                           finished_at=Path(runs).stat().st_mtime)
        paths.append(str(write_job_json(Path(folder) / f"{stem}.json", doc)))
        report(progress, "bench", 2, 3, "copying the runs JSONL")
        copy = Path(folder) / f"{stem}.records.jsonl"  # never the runs file itself
        if copy.resolve() != Path(runs).resolve():
            write_bytes(copy, Path(runs).read_bytes())
        paths.append(str(copy))
        report(progress, "bench", 3, 3, "exported")
        return paths

    # -- tree search (search screen) ----------------------------------------------------------
    def chat_prompt_ids(self, lm: LoadedModel, prompt: str, system: Optional[str]) -> list[int]:
        """The prompt through the model's chat template (generation prompt added); a tokenizer
        without a template gets the plain format (docs/chat-templates.md)."""
        from engine.lm.templates import chat_prompt_ids

        # one rule with the CLI and chat: typed special-token strings stay text
        return chat_prompt_ids(lm.tokenizer, prompt, system)

    def tree_search(self, lm: LoadedModel, prompt: str, system: Optional[str], reward_spec: str,
                    allow_plugin: bool, fields: dict[str, Any], *,
                    progress: Optional[ProgressFn] = None,
                    cancel: Optional[CancelToken] = None) -> TreeRun:
        """Tree search from the search screen's validated fields (``TreeConfig`` field names),
        then the greedy answer with the same horizon, both scored by the same reward
        (engine/treesearch/versus_greedy.py, shared with ``tokenforge search``). The spec is
        parsed again here (a fresh reward object per run; plugin code is imported only now)."""
        from engine.treesearch.rewards import parse_reward
        from engine.treesearch.search import TreeConfig
        from engine.treesearch.versus_greedy import search_then_greedy

        reward = parse_reward(reward_spec, allow_plugin=allow_plugin)
        ids = self.chat_prompt_ids(lm, prompt, system)
        return search_then_greedy(lm, ids, reward, TreeConfig(**fields), progress=progress,
                                  cancel=cancel)
