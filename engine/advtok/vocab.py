"""Token id -> exact bytes table for a tokenizer, built once and cached on disk.

Tokenizations are sequences of token *byte strings*, never decoded strings: partial-UTF-8 tokens
decode to U+FFFD and would collapse onto each other (docs/algorithms.md §1.1). ``get_vocab()``
is called exactly once because every call rebuilds the whole dict; the table for 50–130K tokens
then takes well under a second, so no process pool is needed.

Supported alphabets: byte-level BPE (GPT-2 ``Ġ`` alphabet: SmolLM2, Llama-3, Qwen), SentencePiece
(``▁`` for space, ``<0xNN>`` byte fallback: Llama-2, Gemma, Mistral) and plain vocabularies whose
token strings are their own UTF-8 text. Special and added ids never become edges.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.paths import cache_dir
from engine.progress import CancelToken, ProgressFn, check, report

FORMAT = "tokenforge-vocab"
VERSION = 1
_CHECK_EVERY = 4096  # cancel check / progress granularity while building (tokens)
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = _bytes_to_unicode()
# str.translate table: each alphabet character -> the latin-1 character of its byte; the 68 raw
# characters that are NOT in the alphabet (space, control bytes, ...) -> U+FFFF so that
# ``encode("latin-1")`` fails and the token is recognised as not byte-level.
_U2B_TRANSLATE: dict[int, Any] = {ord(u): chr(b) for b, u in _B2U.items()}
for _c in range(256):
    if chr(_c) not in _B2U.values():
        _U2B_TRANSLATE[_c] = "\uffff"


def byte_level_bytes(token: str) -> Optional[bytes]:
    """Bytes of a GPT-2 byte-level token string, or None when it is not in that alphabet."""
    try:
        return token.translate(_U2B_TRANSLATE).encode("latin-1")
    except UnicodeEncodeError:
        return None


def sentencepiece_bytes(token: str) -> bytes:
    """Bytes of a SentencePiece piece: ``<0xNN>`` is the byte NN, ``▁`` is a space."""
    m = _BYTE_TOKEN.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("\u2581", " ").encode("utf-8")


@dataclass
class Vocab:
    """Exact bytes of every ordinary token plus a lookup from byte strings to ids."""

    token_bytes: list[Optional[bytes]]      # index = token id; None for special/added/unusable ids
    by_bytes: dict[bytes, list[int]]        # exact byte string -> ids (duplicates exist)
    max_len: int                            # longest token in bytes
    kind: str                               # "byte_bpe" | "sentencepiece" | "plain"
    hash: str                               # hash of the tokenizer vocabulary (cache key)
    special_ids: list[int]
    token_strings: list[Optional[str]] = field(default_factory=list, repr=False)
    build_s: float = 0.0
    from_cache: bool = False
    cache_note: str = ""  # set when a cached file was unusable and rebuilt (shown to the user)
    _lengths: Optional[list[int]] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.token_bytes)

    @property
    def n_tokens(self) -> int:
        """Number of ordinary (edge-capable) tokens."""
        return sum(1 for b in self.token_bytes if b is not None)

    def lengths(self) -> list[int]:
        """Distinct token lengths in bytes, ascending (lookups skip lengths no token has)."""
        if self._lengths is None:
            self._lengths = sorted({len(b) for b in self.by_bytes})
        return self._lengths

    def matches(self, data: bytes, i: int) -> list[tuple[int, int]]:
        """Every (end offset j, token id) whose token bytes equal ``data[i:j]``; sorted by j."""
        out: list[tuple[int, int]] = []
        n = len(data)
        get = self.by_bytes.get
        for L in self.lengths():
            j = i + L
            if j > n:
                break
            ids = get(data[i:j])
            if ids:
                for t in ids:
                    out.append((j, t))
        return out

    def token_str(self, tid: int) -> str:
        """Human-readable text of one token (bytes decoded with replacement; specials by name)."""
        b = self.token_bytes[tid] if 0 <= tid < len(self.token_bytes) else None
        if b is None:
            s = self.token_strings[tid] if tid < len(self.token_strings) else None
            return s if s is not None else f"<id {tid}>"
        return b.decode("utf-8", errors="replace")

    def bytes_of(self, ids: list[int]) -> bytes:
        """Concatenated bytes of ordinary tokens; InputError on a special/unknown id."""
        from engine.errors import InputError

        parts = []
        for t in ids:
            b = self.token_bytes[t] if isinstance(t, int) and 0 <= t < len(self.token_bytes) else None
            if b is None:
                raise InputError(f"token id {t} is not an ordinary vocabulary token")
            parts.append(b)
        return b"".join(parts)


def _vocab_strings(tokenizer: Any) -> tuple[list[Optional[str]], list[int]]:
    """Token strings by id (one ``get_vocab()`` call) and the ids to exclude (special + added)."""
    v = tokenizer.get_vocab()
    size = max(len(tokenizer), (max(v.values()) + 1) if v else 0)
    strings: list[Optional[str]] = [None] * size
    for s, i in v.items():
        if 0 <= i < size:
            strings[i] = s
    excluded = set(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    excluded.update(int(i) for i in added.keys())
    return strings, sorted(i for i in excluded if 0 <= i < size)


def detect_kind(tokenizer: Any, strings: list[Optional[str]]) -> str:
    """byte_bpe / sentencepiece / plain, from the fast tokenizer's decoder or, failing that,
    from the alphabet of the vocabulary itself (no family detection by name)."""
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is not None:
        parts = []
        for comp in (getattr(bt, "decoder", None), getattr(bt, "pre_tokenizer", None)):
            if comp is not None:
                try:
                    parts.append(comp.__getstate__().decode("utf-8", "replace"))
                except Exception:
                    parts.append(type(comp).__name__)
        desc = " ".join(parts)
        if "ByteLevel" in desc:
            return "byte_bpe"
        if "Metaspace" in desc or "ByteFallback" in desc or "\u2581" in desc:
            return "sentencepiece"
    sample = [s for s in strings[: 20000] if s]
    g = sum(1 for s in sample if s.startswith("\u0120"))
    sp = sum(1 for s in sample if "\u2581" in s)
    hexb = sum(1 for s in sample if _BYTE_TOKEN.match(s))
    if sp > g or hexb >= 128:
        return "sentencepiece"
    if g > 0 and all(byte_level_bytes(s) is not None for s in sample[:2000]):
        return "byte_bpe"
    return "plain"


def vocab_hash(kind: str, strings: list[Optional[str]], special: list[int]) -> str:
    """Content hash of the vocabulary: alphabet kind, every token string by id, excluded ids."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}:{VERSION}:{kind}:{len(strings)}\n".encode())
    h.update(json.dumps(strings, ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps(special).encode())
    return h.hexdigest()[:24]


def _index(token_bytes: list[Optional[bytes]]) -> tuple[dict[bytes, list[int]], int]:
    by: dict[bytes, list[int]] = {}
    longest = 0
    for i, b in enumerate(token_bytes):
        if b is None:
            continue
        lst = by.get(b)
        if lst is None:
            by[b] = [i]
        else:
            lst.append(i)
        if len(b) > longest:
            longest = len(b)
    return by, longest


def _convert(kind: str, strings: list[Optional[str]], excluded: set[int],
             progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> list[Optional[bytes]]:
    conv = {"byte_bpe": byte_level_bytes, "sentencepiece": sentencepiece_bytes}.get(
        kind, lambda s: s.encode("utf-8", errors="strict"))
    out: list[Optional[bytes]] = [None] * len(strings)
    total = len(strings)
    for start in range(0, total, _CHECK_EVERY):
        check(cancel)
        stop = min(total, start + _CHECK_EVERY)
        for i in range(start, stop):
            s = strings[i]
            if s is None or i in excluded:
                continue
            try:
                b = conv(s)
            except UnicodeEncodeError:
                b = None
            out[i] = b if b else None  # empty tokens would be self-loops: never edges
        if progress is not None and stop < total:
            report(progress, "vocab", stop, total, "building token byte table")
    return out


def build_vocab(tokenizer: Any, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> Vocab:
    """Build the table from the tokenizer (no cache)."""
    t0 = time.perf_counter()
    check(cancel)
    strings, special = _vocab_strings(tokenizer)
    kind = detect_kind(tokenizer, strings)
    token_bytes = _convert(kind, strings, set(special), progress, cancel)
    by, longest = _index(token_bytes)
    vb = Vocab(token_bytes=token_bytes, by_bytes=by, max_len=longest, kind=kind,
               hash=vocab_hash(kind, strings, special), special_ids=special,
               token_strings=strings)
    vb.build_s = time.perf_counter() - t0
    report(progress, "vocab", len(strings), len(strings),
           f"built {kind} vocabulary: {len(by)} byte strings, longest {longest} B",
           hash=vb.hash, cache="miss", special_excluded=len(special),
           elapsed=round(vb.build_s, 3))
    return vb


def cache_path(h: str) -> Path:
    return cache_dir("vocab") / f"{h}.json"


def _read_cached(path: Path) -> str:
    from engine.bounded_json import BadJSON, read_text

    try:
        return read_text(path, "cached vocabulary", max_bytes=256 << 20)
    except BadJSON as e:
        raise ValueError(str(e)) from None


def _payload_checksum(tokens: list[Optional[str]]) -> str:
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()


def _serialise(vb: Vocab) -> str:
    tokens = [b.hex() if b is not None else None for b in vb.token_bytes]
    return json.dumps({"format": FORMAT, "version": VERSION, "hash": vb.hash, "kind": vb.kind,
                       "size": len(tokens), "special_ids": vb.special_ids,
                       "checksum": _payload_checksum(tokens), "tokens": tokens})


def _deserialise(text: str, expect_hash: str, expect_size: int) -> tuple[str, list[Optional[bytes]], list[int]]:
    """Parse and validate a cache file; ValueError says what is wrong with it."""
    from engine.bounded_json import BadJSON, loads

    try:
        obj = loads(text, "cache file")
    except BadJSON as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a tokenforge vocabulary file")
    if obj.get("version") != VERSION:
        raise ValueError(f"format version {obj.get('version')!r}, expected {VERSION}")
    if obj.get("hash") != expect_hash:
        raise ValueError("belongs to another tokenizer (hash mismatch)")
    tokens = obj.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != expect_size or obj.get("size") != expect_size:
        raise ValueError("wrong number of tokens")
    if obj.get("checksum") != _payload_checksum(tokens):
        raise ValueError("checksum mismatch (file modified or damaged)")
    kind = obj.get("kind")
    if kind not in ("byte_bpe", "sentencepiece", "plain"):
        raise ValueError(f"unknown kind {kind!r}")
    special = obj.get("special_ids")
    if not isinstance(special, list) or not all(isinstance(i, int) for i in special):
        raise ValueError("bad special_ids")
    try:
        tb = [bytes.fromhex(t) if t is not None else None for t in tokens]
    except (TypeError, ValueError):
        raise ValueError("bad token bytes") from None
    return kind, tb, special


def load_vocab(tokenizer: Any, *, cache: bool = True, progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelToken] = None) -> Vocab:
    """The vocabulary from ``cache/vocab/<hash>.json`` when valid, else built and saved.

    The file is never trusted: format, version, hash, size and a checksum of the payload are
    verified. A corrupt, truncated or foreign file is reported through ``progress`` and rebuilt
    (then overwritten atomically)."""
    t0 = time.perf_counter()
    check(cancel)
    note = ""
    strings, special = _vocab_strings(tokenizer)
    kind = detect_kind(tokenizer, strings)
    h = vocab_hash(kind, strings, special)
    if cache:
        from engine.integrity import check_file, file_record_path, quarantine, write_file

        path = cache_path(h)
        if path.exists() or path.is_symlink() or file_record_path(path).exists():
            report(progress, "vocab", 0, len(strings), f"reading cached vocabulary {path.name}",
                   hash=h, cache="hit?")
            try:
                problem = check_file(path)
                if problem is not None and problem != "no integrity record":
                    raise ValueError(problem)
                ckind, tb, cspecial = _deserialise(_read_cached(path), h, len(strings))
                if ckind != kind or cspecial != special:
                    raise ValueError("kind or special ids differ from the tokenizer")
                if problem == "no integrity record":  # written before records: adopt it
                    from engine.errors import StorageError

                    try:
                        write_file(path, path.read_bytes())
                    except StorageError:  # no room for the record: used as it is, adopted later
                        pass
            except (ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError) as e:
                from engine.errors import is_disk_fault

                if is_disk_fault(e):  # the disk's fault (no permission, I/O): left alone
                    note = f"cached vocabulary {path.name} could not be read ({e}); rebuilt"
                    report(progress, "vocab", 0, len(strings), note, hash=h, cache="unreadable",
                           warning=note)
                else:
                    moved = quarantine(path)
                    note = (f"cached vocabulary {path.name} is unusable ({e}); moved aside to "
                            f"{moved.name if moved else '—'} and rebuilt")
                    report(progress, "vocab", 0, len(strings), note.replace("rebuilt", "rebuilding"),
                           hash=h, cache="corrupt", warning=note)
            else:
                by, longest = _index(tb)
                vb = Vocab(token_bytes=tb, by_bytes=by, max_len=longest, kind=kind, hash=h,
                           special_ids=special, token_strings=strings, from_cache=True)
                vb.build_s = time.perf_counter() - t0
                report(progress, "vocab", len(strings), len(strings),
                       f"loaded cached {kind} vocabulary ({len(by)} byte strings)",
                       hash=h, cache="hit", special_excluded=len(special),
                       elapsed=round(vb.build_s, 3))
                return vb
    token_bytes = _convert(kind, strings, set(special), progress, cancel)
    by, longest = _index(token_bytes)
    vb = Vocab(token_bytes=token_bytes, by_bytes=by, max_len=longest, kind=kind, hash=h,
               special_ids=special, token_strings=strings, cache_note=note)
    if cache:
        from engine.integrity import write_file

        from engine.errors import StorageError

        try:  # a cache: the disk refusing it (full, read-only) costs a rebuild next time, no more
            write_file(cache_path(h), _serialise(vb).encode("utf-8"))
        except StorageError as e:
            vb.cache_note = (note + "; " if note else "") + f"vocabulary not cached ({e})"
    vb.build_s = time.perf_counter() - t0
    report(progress, "vocab", len(strings), len(strings),
           f"built {kind} vocabulary: {len(by)} byte strings, longest {longest} B",
           hash=h, cache="miss", special_excluded=len(special), elapsed=round(vb.build_s, 3))
    return vb
