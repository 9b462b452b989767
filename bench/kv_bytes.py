"""KV-cache memory as measured (issue 23), bundled model: per cache method, the bytes the cache
counts, the bytes its storages really hold (spare capacity included), the bytes written into it
per generated token, and the process high-water delta of one run — every run decoding the same
number of new tokens. Byte figures do not depend on the machine's load (timings are left to the
dashboard, which pairs and interleaves them).

    .venv/bin/python bench/kv_bytes.py [--queries qa-1,long-1] [--tokens 24]

Prints a table and writes bench/results/kv_bytes.json. One discarded warm-up run per method
first, so one-off allocations (the first forward's workspaces) are not charged to a method.
"""
from __future__ import annotations

import argparse

from _util import env_record, write_result

from engine.bench.memory import HighWater
from engine.bench.methods import make_method
from engine.bench.suite import load_suite
from engine.lm.model import load_model

METHODS = ("baseline", "kv-contiguous", "kv-fp8", "evict-sinks", "evict-cake", "evict-snapkv",
           "evict-pyramidkv", "hybrid-kv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", default="qa-1,long-1")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    lm = load_model("default")
    queries = load_suite("core-v1", ids=args.queries.split(",")).queries
    rows = []
    for name in args.methods.split(","):
        m = make_method(name)
        m.prepare(lm)
        try:
            m.run(lm, queries[0], 4, fixed_length=True)  # warm-up, discarded
            for q in queries:
                with HighWater(lm.torch_device) as hw:
                    r = m.run(lm, q, args.tokens, fixed_length=True)
                c = r.cost
                row = {"method": name, "query": q.id, "prompt_tokens": c["prompt_tokens_in"],
                       "new_tokens": c["new_tokens"], "kv_counted": c["kv_bytes_stored"],
                       "kv_allocated": c["kv_bytes_allocated"],
                       "copied_per_token": c["kv_copy_bytes_per_token"], "hwm_delta": hw.delta,
                       "prefill_evicted": r.extra.get("prefill_evicted")}
                rows.append(row)
                mib = lambda v: "—" if v is None else f"{v / 2 ** 20:8.2f}"  # noqa: E731
                print(f"{name:16s} {q.id:7s} {row['prompt_tokens']:4d}+{row['new_tokens']:<3d} "
                      f"counted {mib(row['kv_counted'])} MiB  allocated {mib(row['kv_allocated'])} MiB  "
                      f"copied/token {mib(row['copied_per_token'])} MiB  hwm Δ {mib(row['hwm_delta'])} MiB",
                      flush=True)
        finally:
            m.restore(lm)
    path = write_result("kv_bytes", {"env": env_record(), "tokens": args.tokens, "rows": rows})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
