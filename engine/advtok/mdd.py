"""Tokenization diagram (MDD) of a string over the byte offsets of its UTF-8 encoding.

Nodes are byte positions 0..n; an edge (i -> j, token t) exists when t's bytes equal
``data[i:j]``. Paths from 0 to n are exactly the tokenizations of the string
(docs/algorithms.md §1.2). Working over bytes (not characters) makes partial-UTF-8 tokens and
byte fallback ordinary edges, so every path decodes to exactly the input bytes.

Only *live* edges are kept: those on some 0 -> n path. Counts are exact Python ints (they pass
2^64 within ~100 characters) and every random draw is an integer draw (``randrange``) so the
samplers stay exactly uniform beyond 2^53.

Distance (docs/algorithms.md §1.3): E(V) = {(end offset, token id)} of V's tokens;
d(X, V) = |E(V) \\ E(X)|.
"""
from __future__ import annotations

import random
import sys
from typing import Any, Iterator, Optional

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn, check, report
from engine.advtok.vocab import Vocab

Edge = tuple[int, int]  # (end offset j, token id) leaving some node i

_CHECK_EVERY = 256  # bytes between cancel checks while building


def _char_at(text: str, byte_off: int) -> tuple[str, int]:
    """The character containing byte ``byte_off`` of text.encode() and its character index."""
    pos = 0
    for ci, ch in enumerate(text):
        w = len(ch.encode("utf-8"))
        if pos + w > byte_off:
            return ch, ci
        pos += w
    return "", len(text)


def encode_text_bytes(text: str) -> bytes:
    """UTF-8 bytes of text; InputError naming the offset of a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"text contains an unpaired surrogate U+{ord(text[e.start]):04X} at "
                         f"character {e.start}; it is not valid Unicode") from None



def decimal_digits(n: int) -> int:
    """Decimal digits of a non-negative int, from its bit length (no conversion; ±1)."""
    return int(n.bit_length() * 0.30103) + 1


def allow_digits(n: int) -> None:
    """Exact counts exceed Python's default 4,300-digit limit for int → str (a count over n
    bytes can have ~0.3·n digits): raise the process's limit to what this count needs so it can
    be printed and written as JSON. Only ever raised, and only as far as a real count requires."""
    need = decimal_digits(n) + 1
    cur = sys.get_int_max_str_digits()
    if cur and need > cur:
        sys.set_int_max_str_digits(need)


def count_label(n: int) -> str:
    """For progress lines: exact up to 4,000 digits (microseconds), else its magnitude (a
    240,000-digit str() takes seconds)."""
    d = decimal_digits(n)
    return str(n) if d <= 4000 else f"~10^{d - 1}"


class MDD:
    """The diagram of one string: counts, uniform samples, neighbours, DOT export."""

    def __init__(self, vocab: Vocab, text: str, *, progress: Optional[ProgressFn] = None,
                 cancel: Optional[CancelToken] = None) -> None:
        if not isinstance(text, str):
            raise InputError("text must be a string")
        if text == "":
            raise InputError("empty text: there is nothing to tokenize")
        self.vocab = vocab
        self.text = text
        self.data = data = encode_text_bytes(text)
        self.n = n = len(data)
        # forward scan: all edges from every byte position (dead ones pruned below)
        raw: list[list[Edge]] = [[] for _ in range(n + 1)]
        for i in range(n):
            if i % _CHECK_EVERY == 0:
                check(cancel)
                if i:
                    report(progress, "mdd", i, n, "scanning bytes")
            raw[i] = vocab.matches(data, i)
        # reachability from 0
        reach = [False] * (n + 1)
        reach[0] = True
        for i in range(n):
            if reach[i]:
                for j, _ in raw[i]:
                    reach[j] = True
        if not reach[n]:
            stop = max(i for i in range(n + 1) if reach[i])
            ch, ci = _char_at(text, stop)
            raise InputError(
                f"no token sequence covers character {ch!r} (U+{ord(ch):04X}) at character "
                f"offset {ci} (byte {stop}): the vocabulary has no token for its bytes",
                hint="this tokenizer has no byte fallback for that character")
        # backward counts over reachable nodes; keep live edges only
        f = [0] * (n + 1)
        f[n] = 1
        out: list[list[Edge]] = [[] for _ in range(n + 1)]
        for i in range(n - 1, -1, -1):
            if i % _CHECK_EVERY == 0:
                check(cancel)  # exact counts are big ints: long texts cost real time here
            if not reach[i]:
                continue
            live = [(j, t) for j, t in raw[i] if f[j] > 0]
            out[i] = live
            f[i] = sum(f[j] for j, _ in live)
        self.out = out
        self.f = f
        self._short: Optional[list[int]] = None
        allow_digits(f[0])
        report(progress, "mdd", n, n, "diagram built", edges=self.n_edges,
               count=count_label(f[0]), bytes=n)

    # ------------------------------------------------------------------ basics
    @property
    def edges(self) -> list[tuple[int, int, int]]:
        """All live edges as (start, end, token id)."""
        return [(i, j, t) for i in range(self.n + 1) for j, t in self.out[i]]

    @property
    def n_edges(self) -> int:
        return sum(len(e) for e in self.out)

    def count(self) -> int:
        """Number of tokenizations (exact)."""
        return self.f[0]

    def spans(self, ids: list[int]) -> list[tuple[int, int, int]]:
        """(start, end, id) of each token of a tokenization; InputError if it is not a path."""
        res = []
        pos = 0
        tb = self.vocab.token_bytes
        for t in ids:
            b = tb[t] if isinstance(t, int) and 0 <= t < len(tb) else None
            if b is None or not self.data.startswith(b, pos):
                raise InputError(f"token id {t} at position {len(res)} does not fit the text")
            res.append((pos, pos + len(b), t))
            pos += len(b)
        if pos != self.n:
            raise InputError("the tokens do not cover the whole text")
        return res

    def edge_set(self, ids: list[int]) -> set[Edge]:
        """E(X): the (end offset, token id) pairs of a tokenization."""
        return {(j, t) for _, j, t in self.spans(ids)}

    def distance(self, x: list[int], v: list[int]) -> int:
        """d(X, V) = |E(V) \\ E(X)|: V's (end offset, token) edges that X lacks (asymmetric)."""
        return len(self.edge_set(v) - self.edge_set(x))

    def contains(self, ids: list[int]) -> bool:
        """True when ids spell exactly the text with ordinary tokens."""
        try:
            self.spans(list(ids))
        except (InputError, TypeError):
            return False
        return True

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.vocab.bytes_of(ids)

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab.token_str(t) for t in ids]

    # ------------------------------------------------------------------ whole-set operations
    def sample(self, rng: random.Random) -> list[int]:
        """One tokenization drawn exactly uniformly (integer draws only)."""
        ids = []
        i = 0
        f = self.f
        while i < self.n:
            r = rng.randrange(f[i])
            for j, t in self.out[i]:
                c = f[j]
                if r < c:
                    ids.append(t)
                    i = j
                    break
                r -= c
        return ids

    def canonical(self, tokenizer: Any) -> list[int]:
        """The tokenizer's own encoding of the text (user text: specials not parsed); it must be
        a path of the diagram, otherwise the tokenizer is not byte-faithful for this text."""
        ids = list(tokenizer.encode(self.text, add_special_tokens=False, split_special_tokens=True))
        if not self.contains(ids):
            got = b""
            try:
                got = self.vocab.bytes_of(ids)
            except InputError:
                pass
            why = ""
            if got == b" " + self.data:
                why = " (it prepends a space: SentencePiece dummy prefix)"
            elif got:
                why = f" (its tokens spell {got[:60]!r})"
            raise InputError("tokenizer is not byte-faithful: its canonical encoding is not a "
                             f"tokenization of the exact input bytes{why}")
        return ids

    def shortest(self) -> list[int]:
        """A tokenization with the fewest tokens (ties: longest first token)."""
        if self._short is None:
            n = self.n
            INF = n + 1
            best = [INF] * (n + 1)
            nxt: list[Optional[Edge]] = [None] * (n + 1)
            best[n] = 0
            for i in range(n - 1, -1, -1):
                for j, t in self.out[i]:
                    if best[j] + 1 < best[i] or (best[j] + 1 == best[i] and nxt[i] and j > nxt[i][0]):
                        best[i] = best[j] + 1
                        nxt[i] = (j, t)
            ids = []
            i = 0
            while i < n:
                j, t = nxt[i]  # type: ignore[misc]
                ids.append(t)
                i = j
            self._short = ids
        return list(self._short)

    def iter_all(self) -> Iterator[list[int]]:
        """Every tokenization, depth first (lexicographic by edge order); no dead branches."""
        stack: list[tuple[int, int]] = [(0, 0)]  # (node, next edge index)
        path: list[int] = []
        while stack:
            i, k = stack[-1]
            if i == self.n:
                yield list(path)
                stack.pop()
                if path:
                    path.pop()
                continue
            if k >= len(self.out[i]):
                stack.pop()
                if path:
                    path.pop()
                continue
            stack[-1] = (i, k + 1)
            j, t = self.out[i][k]
            path.append(t)
            stack.append((j, 0))

    def enumerate(self, limit: int) -> list[list[int]]:
        """Up to ``limit`` distinct tokenizations (no EOS appended)."""
        res = []
        if limit <= 0:
            return res
        for p in self.iter_all():
            res.append(p)
            if len(res) >= limit:
                break
        return res

    # ------------------------------------------------------------------ distance classes
    def _g(self, x: list[int], k: int) -> list[list[int]]:
        """g[i][r]: number of paths i -> n with exactly r edges not in E(X), r = 0..k."""
        if k < 0:
            raise InputError("distance k must be ≥ 0")
        ex = self.edge_set(x)
        n = self.n
        g = [[0] * (k + 1) for _ in range(n + 1)]
        g[n][0] = 1
        for i in range(n - 1, -1, -1):
            gi = g[i]
            for j, t in self.out[i]:
                gj = g[j]
                if (j, t) in ex:
                    for r in range(k + 1):
                        gi[r] += gj[r]
                else:
                    for r in range(1, k + 1):
                        gi[r] += gj[r - 1]
        return g

    def count_at(self, x: list[int], k: int) -> int:
        """Number of tokenizations with exactly k (end offset, token) edges not in X."""
        return self._g(x, k)[0][k]

    def counts_by_distance(self, x: list[int], kmax: int) -> list[int]:
        """[count_at(x, 0), ..., count_at(x, kmax)] in one pass."""
        return list(self._g(x, kmax)[0])

    def _iter_at(self, x: list[int], k: int, g: list[list[int]]) -> Iterator[list[int]]:
        """Depth-first over paths with exactly k edges outside E(X), entering only states
        (node, remaining) that can still finish (g > 0): no dead branch is ever explored.
        Iterative, so very long texts do not hit the recursion limit."""
        if g[0][k] == 0:
            return
        ex = self.edge_set(x)
        n = self.n
        out = self.out
        path: list[int] = []
        stack: list[list[int]] = [[0, k, 0]]  # node, remaining new edges, next edge index
        while stack:
            top = stack[-1]
            i, r, e = top
            if i == n:
                yield list(path)
                stack.pop()
                if path:
                    path.pop()
                continue
            edges = out[i]
            while e < len(edges):
                j, t = edges[e]
                e += 1
                r2 = r if (j, t) in ex else r - 1
                if r2 >= 0 and g[j][r2] > 0:
                    top[2] = e
                    path.append(t)
                    stack.append([j, r2, 0])
                    break
            else:
                stack.pop()
                if path:
                    path.pop()

    def neighbours(self, x: list[int], k: int, *, limit: Optional[int] = None) -> list[list[int]]:
        """Tokenizations with exactly k edges not in E(X) (all, or the first ``limit``)."""
        g = self._g(x, k)
        res = []
        if limit is not None and limit <= 0:
            return res
        for v in self._iter_at(x, k, g):
            res.append(v)
            if limit is not None and len(res) >= limit:
                break
        return res

    def within(self, x: list[int], k: int) -> list[list[int]]:
        """Tokenizations at distance 1..k from X (merges included at d = 1)."""
        g = self._g(x, k)
        res = []
        for d in range(1, k + 1):
            res.extend(self._iter_at(x, d, g))
        return res

    def sample_at(self, x: list[int], k: int, rng: random.Random, n: int) -> list[list[int]]:
        """``n`` independent exactly-uniform draws among the tokenizations at distance exactly k
        (draws may repeat); [] when there is none."""
        g = self._g(x, k)
        if g[0][k] == 0 or n <= 0:
            return []
        ex = self.edge_set(x)
        res = []
        for _ in range(n):
            ids = []
            i, r = 0, k
            while i < self.n:
                u = rng.randrange(g[i][r])
                for j, t in self.out[i]:
                    r2 = r if (j, t) in ex else r - 1
                    c = g[j][r2] if r2 >= 0 else 0
                    if u < c:
                        ids.append(t)
                        i, r = j, r2
                        break
                    u -= c
            res.append(ids)
        return res

    # ------------------------------------------------------------------ export
    def to_dot(self, highlight: Optional[list[int]] = None) -> str:
        """Graphviz DOT of the live diagram (nodes = byte offsets, edge labels = token text);
        edges of ``highlight`` (e.g. the canonical tokenization) are drawn bold."""
        hl = self.edge_set(highlight) if highlight else set()

        def esc(s: str) -> str:
            return (s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                    .replace("\r", "\\r").replace("\t", "\\t"))

        lines = ["digraph MDD {", "  rankdir=LR;", '  node [shape=circle, fontsize=10];',
                 f'  label="{esc(self.text[:80])}  ({self.count()} tokenizations)";']
        for i in range(self.n + 1):
            if i == 0 or i == self.n or self.out[i]:
                shape = ', shape=doublecircle' if i == self.n else ""
                lines.append(f'  n{i} [label="{i}"{shape}];')
        for i in range(self.n + 1):
            for j, t in self.out[i]:
                style = ", penwidth=2.5" if (j, t) in hl else ""
                lab = esc(repr(self.vocab.token_str(t))[1:-1])
                lines.append(f'  n{i} -> n{j} [label="{lab} ({t})"{style}];')
        lines.append("}")
        return "\n".join(lines) + "\n"
