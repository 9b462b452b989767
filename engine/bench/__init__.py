"""The method dashboard's engine: the multi-query harness, its JSONL records, the report, the
shipped suites and the generation methods (methods/). May import engine.lm and the plumbing."""
