"""Conversations that outlive the process, and the user's configuration: the TOML config with
named profiles (profiles.py), the sqlite session store, KV-cache snapshots, offline model
discovery. May import only engine.lm and engine's shared plumbing (errors, progress, atomic,
paths) — never engine.advtok, engine.treesearch or engine.bench."""
