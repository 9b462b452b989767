"""The language-model core: loading, the standard and lean forwards, sampling, the decoding loop,
chat sessions, chat templates, text streaming, and the token explorer's pieces (per-token facts,
answer branching, surprisal, logit lens, inspection). May import only engine's shared plumbing
(errors, progress, atomic, paths) — never engine.advtok, engine.treesearch or engine.bench."""
