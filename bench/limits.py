"""The README's "Limits" table, computed from the code's own bounds (the bounds declared on the
config fields, engine/budget.py memory estimates) for a given amount of available memory and
the bundled model's config (read from the converted cache: no weights are loaded).

    .venv/bin/python bench/limits.py [--memory-gib 16] [--prompt-tokens 40]
    .venv/bin/python bench/limits.py --measure [--text-bytes 2000] [--count 400]

Prints a Markdown table (nothing is timed, so no JSON under bench/results/). ``--measure``
checks the memory budgets against the process's real high-water mark instead: each budgeted
workload (``tokenize --sample N``, ``tokenize --neighbours K --limit N``) runs as a real
``tokenforge tokenize … --json`` process, its peak RSS minus that of the same command with the
budgeted part off (``--sample 0``; no ``--neighbours``) is the measured cost, and the budget's plan
(engine/budget.py, what the option check compares with the usable memory) must stay above it.
Writes bench/results/limits.json (planned, measured, ratio per case)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _bundled_config() -> SimpleNamespace:
    import json

    from engine.lm.model import bundled_gguf, _quick_hash
    from engine.paths import cache_dir

    gguf = bundled_gguf()
    cfg = cache_dir("models") / f"{gguf.stem}-{_quick_hash(gguf)}" / "config.json"
    if not cfg.exists():
        sys.exit(f"{cfg} missing: run `tokenforge tokenize hi` once to convert the bundled model")
    return SimpleNamespace(**json.loads(cfg.read_text(encoding="utf-8")))


def peak_rss(argv: list[str]) -> int:
    """The high-water RSS (bytes) of one ``tokenforge`` command run in a fresh process."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
            "if p.returncode: sys.exit(p.stderr.decode()[-2000:])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n")
    env = {**os.environ, "TOKENFORGE_MEMORY_BYTES": str(1 << 50)}  # measure, do not refuse
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "app.cli", *argv],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def sample_text(n: int) -> str:
    """``n`` bytes of mixed prose (accents: multi-byte characters, many tokenizations)."""
    base = "Naïve café owners résumé their crème brûlée recipes; the señor's piñata waits. "
    return (base * (n // len(base) + 1)).encode()[:n].decode("utf-8", "ignore")


def measure(text_bytes: int, count: int, k: int = 2) -> list[dict]:
    """Planned vs measured bytes for each tokenize budget at one size."""
    from engine.budget import neighbours_bound, samples_bound

    text = sample_text(text_bytes)
    n = len(text.encode())
    cases = [("tokenize --sample", samples_bound(n), ["--sample", str(count)], ["--sample", "0"]),
             (f"tokenize --neighbours {k} --limit", neighbours_bound(n, k),
              ["--neighbours", str(k), "--limit", str(count)], [])]
    rows = []
    for name, bound, on, off in cases:
        base = peak_rss(["tokenize", text, "--json", *off])
        peak = peak_rss(["tokenize", text, "--json", *on])
        planned = bound.per_unit * count + bound.fixed
        measured = max(0, peak - base)
        rows.append({"budget": name, "text_bytes": n, "count": count, "planned_bytes": planned,
                     "measured_bytes": measured, "baseline_rss": base, "peak_rss": peak,
                     "plan_over_measured": round(planned / max(1, measured), 2), "why": bound.why})
        print(f"{name} {count:,} on {n:,} bytes: planned {planned / 2**20:,.1f} MiB, measured "
              f"{measured / 2**20:,.1f} MiB (× {planned / max(1, measured):.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory-gib", type=float, default=16.0, help="available memory assumed")
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--measure", action="store_true", help="planned vs measured RSS (see above)")
    ap.add_argument("--text-bytes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--count", type=int, default=400)
    a = ap.parse_args(argv)
    if a.measure:
        from bench._util import env_record, write_result

        rows = [r for n in a.text_bytes for r in measure(n, a.count)]
        print(write_result("limits", {"env": env_record(), "cases": rows}))
        return 0 if all(r["planned_bytes"] >= r["measured_bytes"] for r in rows) else 1

    from app.argcheck import MAX_INPUT_BYTES
    from engine import bounded_json as bj
    from engine.advtok.config import MAX_TEXT_BYTES, AttackConfig, TokenizeConfig
    from engine.bench.config import BenchConfig
    from engine.bounds import MAX_TEXT_CHARS, bound_of
    from engine.lm.config import SamplingConfig
    from engine.treesearch.config import TreeConfig
    from engine.bench.suite_files import suite_entries
    from engine.budget import (SEED_MAX, TOKEN_LIST_ID_BYTES, USABLE_SHARE, fmt_bytes, grid_bound,
                               kv_bytes_per_token, neighbours_bound, samples_bound,
                               tree_rollout_bound)

    usable = int(a.memory_gib * (1 << 30) * USABLE_SHARE)
    cfg = _bundled_config()
    lm = SimpleNamespace(config=cfg, dtype="float32")
    ctx = int(cfg.max_position_embeddings)
    P = a.prompt_tokens
    tree = tree_rollout_bound(lm, P, 50)
    suite = len(suite_entries("core-v1"))
    grid = grid_bound("--repeats", 3 * suite)
    samp = samples_bound(1000)
    neigh = neighbours_bound(1000, 2)
    rows = [
        ("`--seed` (every command)", f"0 … {SEED_MAX:,}", "torch.Generator.manual_seed takes a signed 64-bit seed"),
        ("`search --rollouts` (horizon 50)", f"{min(tree.limit(usable), bound_of(TreeConfig, 'rollouts').hi):,}",
         f"{fmt_bytes(tree.per_unit)} per rollout, worst case: ({P}+50) positions × "
         f"{fmt_bytes(kv_bytes_per_token(cfg))} KV + 50 stored nuclei of ≤ {cfg.vocab_size:,} ids × 8 B"),
        ("`search --batch`", f"{bound_of(TreeConfig, 'batch').hi}", "TreeConfig.batch: rollouts decoded together"),
        ("`search --horizon`, `chat --max-new-tokens`", f"< {ctx:,} − prompt", "the model's context length"),
        ("`bench --repeats` (3 methods, core-v1)",
         f"{bound_of(BenchConfig, 'repeats').hi:,} (memory: {grid.limit(usable):,})",
         f"BenchConfig.repeats; the grid keeps {3 * suite} scheduled runs per repeat × "
         f"{grid.per_unit // (3 * suite)} B each (time bounds it long before)"),
        ("`tokenize --sample`", f"{bound_of(TokenizeConfig, 'samples').hi:,} (memory: {samp.limit(usable):,} for 1 KB of text)",
         f"TokenizeConfig.samples; each sample is kept and written as a token-id list "
         f"(64 + {TOKEN_LIST_ID_BYTES} B per id, measured: `bench/limits.py --measure`)"),
        ("`tokenize --neighbours 2 --limit`", f"{neigh.limit(usable):,} for 1 KB of text",
         "as samples, plus the table of exact counts: K + 1 ints per byte of text, ≈ 1 bit per "
         "byte each (n²/12 B per column)"),
        ("`tokenize --neighbours K`", f"{bound_of(TokenizeConfig, 'neighbours').hi}", "TokenizeConfig.neighbours (a fixed cap: the count's table grows with K)"),
        ("`tokenize TEXT` (or `-`: stdin, read no further)", f"{MAX_TEXT_BYTES:,} bytes", "engine.advtok.config.MAX_TEXT_BYTES; its exact count can have ~0.3 digits per byte (the int→str limit is raised to fit)"),
        ("`chat --stop` / `--banned-ids`",
         f"{bound_of(SamplingConfig, 'stop_strings').max_items} × ≤ "
         f"{bound_of(SamplingConfig, 'stop_strings').item.max_chars:,} characters / "
         f"{bound_of(SamplingConfig, 'banned_ids').max_items:,} ids",
         "SamplingConfig: every stop string is searched for at each token (and up to its length "
         "of answer held back); past the largest vocabulary a list could only ban everything"),
        ("free text (`--prompt`, `--request`, …)", f"{MAX_TEXT_CHARS:,} characters", "engine.bounds.MAX_TEXT_CHARS, the same for CLI and TUI"),
        ("`attack --samples` / `--batch-cap`", f"{bound_of(AttackConfig, 'samples').hi:,} / "
         f"{bound_of(AttackConfig, 'batch_cap').hi:,}", "AttackConfig: the samples decode as one batch (each row's KV and logits memory-checked before the search); rows per scoring batch"),
        ("`--top-k`, `--max-new-tokens` (pre-load)", f"{bound_of(SamplingConfig, 'top_k').hi:,}, {bound_of(SamplingConfig, 'max_new_tokens').hi:,}",
         "before the model is known; a top-k beyond the vocabulary means off, the context bounds prompt + answer"),
        ("suite / dataset / runs files", f"{fmt_bytes(MAX_INPUT_BYTES)}, lines ≤ {fmt_bytes(bj.MAX_LINE_BYTES)}, "
         f"nesting ≤ {bj.MAX_DEPTH}", "files are read whole; Python's json recurses once per nesting level"),
    ]
    print(f"Limits with {a.memory_gib:g} GiB available ({USABLE_SHARE:.0%} usable by one job = "
          f"{fmt_bytes(usable)}), bundled model ({cfg.num_hidden_layers} layers, context {ctx:,}):\n")
    print("| option | largest value | why |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
