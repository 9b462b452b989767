"""Look at a string's tokenizations without running a search: canonical, exact count, uniform
samples and distance-k neighbours, as one UI-free report (the CLI and the TUI render it)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

from engine.errors import InputError
from engine.inert import printable
from engine.advtok.config import MAX_TEXT_BYTES, TokenizeConfig
from engine.advtok.mdd import MDD
from engine.progress import CancelToken, ProgressFn, check, report
from engine.advtok.vocab import Vocab, load_vocab


def token_label(vocab: Vocab, tid: int) -> str:
    """Printable text of one token: valid UTF-8 shown as text with control characters escaped
    (engine.inert's rules, the same for every printing path), partial characters as byte escapes
    (``\\xe4``) so nothing collapses into U+FFFD."""
    b = vocab.token_bytes[tid] if 0 <= tid < len(vocab.token_bytes) else None
    if b is None:
        return printable(vocab.token_str(tid))
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in b)
    return printable(s)


@dataclass
class TokenizationReport:
    """What a researcher wants to see about one string's tokenizations."""

    text: str
    n_bytes: int
    n_edges: int
    count: int
    canonical: list[int]
    shortest: list[int]
    samples: list[list[int]] = field(default_factory=list)
    neighbours_k: Optional[int] = None
    neighbours_total: int = 0
    neighbours: list[list[int]] = field(default_factory=list)
    neighbours_sampled: bool = False   # True: a uniform sample (with repeats removed) of the ring
    seed: int = 0
    vocab_kind: str = ""
    vocab_hash: str = ""

    def to_json(self, vocab: Vocab) -> dict[str, Any]:
        def tk(ids: list[int]) -> dict[str, Any]:
            return {"ids": list(ids), "tokens": [token_label(vocab, t) for t in ids]}

        return {
            "text": self.text,
            "bytes": self.n_bytes,
            "edges": self.n_edges,
            "canonical": tk(self.canonical),
            "count": str(self.count),
            "shortest": tk(self.shortest),
            "samples": [tk(s) for s in self.samples],
            "seed": self.seed,
            "neighbours": [tk(v) for v in self.neighbours],
            "neighbours_k": self.neighbours_k,
            "neighbours_total": str(self.neighbours_total),
            "neighbours_sampled": self.neighbours_sampled,
            "vocab": {"kind": self.vocab_kind, "hash": self.vocab_hash},
        }


def inspect_text(tokenizer: Any, text: str, *, samples: int = 0, neighbours: Optional[int] = None,
                 limit: int = 20, seed: int = 0, vocab: Optional[Vocab] = None,
                 progress: Optional[ProgressFn] = None,
                 cancel: Optional[CancelToken] = None) -> tuple[TokenizationReport, MDD]:
    """Build the diagram of ``text`` and gather canonical, count, ``samples`` uniform samples and
    up to ``limit`` neighbours at distance exactly ``neighbours`` (all of them when there are at
    most ``limit``, else a uniform sample of the ring)."""
    TokenizeConfig(samples=samples, neighbours=neighbours, limit=limit, seed=seed).validate()
    if not text:
        raise InputError("empty text: give a string to tokenize")
    n = len(text.encode("utf-8", errors="surrogatepass"))
    if n > MAX_TEXT_BYTES:
        raise InputError(f"text is {n:,} bytes; the limit is {MAX_TEXT_BYTES:,}")
    vb = vocab if vocab is not None else load_vocab(tokenizer, progress=progress, cancel=cancel)
    m = MDD(vb, text, progress=progress, cancel=cancel)
    canon = m.canonical(tokenizer)
    report(progress, "mdd", m.n, m.n, "canonical tokenization is a path of the diagram",
           edges=m.n_edges, count=str(m.count()), canonical_len=len(canon),
           shortest_len=len(m.shortest()), canonical_is_path=True)
    rep = TokenizationReport(text=text, n_bytes=m.n, n_edges=m.n_edges, count=m.count(),
                             canonical=canon, shortest=m.shortest(), seed=seed,
                             vocab_kind=vb.kind, vocab_hash=vb.hash)
    rng = random.Random(seed)
    for _ in range(samples):
        check(cancel)
        rep.samples.append(m.sample(rng))
    if neighbours is not None:
        total = m.count_at(canon, neighbours)
        rep.neighbours_k = neighbours
        rep.neighbours_total = total
        if total <= limit:
            rep.neighbours = m.neighbours(canon, neighbours)
        else:
            seen: set[tuple[int, ...]] = set()
            draws = 0
            while len(rep.neighbours) < limit and draws < 50 * limit:
                check(cancel)
                for v in m.sample_at(canon, neighbours, rng, limit):
                    draws += 1
                    if tuple(v) not in seen:
                        seen.add(tuple(v))
                        rep.neighbours.append(v)
                        if len(rep.neighbours) >= limit:
                            break
            rep.neighbours_sampled = True
    return rep, m
