"""The interface every comparison-dashboard method implements, and the baseline behaviour.

A method is measured by ``engine/bench/harness.py``: ``prepare`` once (calibration time is charged as
``aux_s``), then ``run`` per query (greedy, timed), ``teacher_forced_logprobs`` on the baseline's
greedy continuation (fidelity KL), ``nll_bits_per_byte`` on held-out prose for model-changing
methods, and ``restore`` at the end, because every method shares the one loaded model.

The default :class:`Method` *is* the baseline: the full chat-templated prompt over a fresh
``DynamicCache`` on the standard Hugging Face forward (so a cache-changing method is compared to
the same code path, not to a different kernel). A subclass overrides only what it changes:

- ``render_prompt`` / ``document_text``: what is fed (prompt pruning);
- ``new_state``: which cache (quantized, evicting) and what is already cached (KV reuse);
- ``feed``: how tokens go through the model (true position ids, eviction after each step);
- ``kv_bytes`` / ``kv_bytes_peak``: how the cache's resident bytes are counted;
- ``prepare`` / ``restore``: model changes (hooks, resized embeddings).

Harness contract: methods are interleaved and share one model, so the harness calls ``prepare``
before *each* measurement of a method (run + its quality passes) and ``restore`` right after.
Cache expensive work (calibration) on the instance so later calls only re-apply it; the seconds
returned by the first call are recorded as ``cost.prepare_s``. Per-run extra work (a compressor)
goes into ``GenState.info["aux_s"]`` and ends up in ``cost.aux_s``. The baseline reference
(greedy continuation + its log-probs) is always computed on the restored model.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from engine.errors import ContextOverflow, InputError
from engine.lm.config import SamplingConfig
from engine.lm.forward import StandardForward, get_forward
from engine.lm.templates import ChatText, Piece, chat_ids, encode_user_text, split_chat
from engine.lm.sampling import LogitsPipeline
from engine.lm.stopping import StopCriteria
from engine.progress import CancelToken, ProgressFn, check

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

QUERY_KINDS = ("chat", "qa", "long", "prose")


@dataclass
class Query:
    """One suite entry. For qa/long the ``prompt`` is the question and ``document`` the context
    it is asked about (methods that prune or evict act on the document)."""

    id: str
    kind: str  # "chat" | "qa" | "long" | "prose"
    prompt: str  # the user message (for qa/long: the question; document separate)
    system: Optional[str] = None
    document: Optional[str] = None
    reference: Optional[str] = None
    turns: list[str] = field(default_factory=list)  # earlier user turns (conversation-reuse row)
    meta: dict = field(default_factory=dict)  # e.g. {"depth": 0.25, "fact": "...", "replies": [...]}


@dataclass
class MethodOutput:
    """A measured greedy generation. ``cost`` keys (docs/bench-methods.md): prompt_tokens_in,
    prompt_tokens_effective, new_tokens, prefill_s, decode_tok_s, total_s, kv_bytes_stored,
    kv_bytes_peak (None when unknown), aux_s."""

    token_ids: list[int]
    text: str
    cost: dict
    extra: dict = field(default_factory=dict)


@dataclass
class GenState:
    """A generation in progress: the cache, the tokens still to prefill and the true position of
    the next token (differs from the cache length once a method evicts)."""

    fwd: Any
    cache: Any
    pending: list[int]  # prompt ids not yet in the cache
    pos: int  # true position of pending[0]
    prompt_tokens_in: int  # the full prompt length this generation answers
    info: dict = field(default_factory=dict)  # method figures (reused tokens, evicted tokens …)


class Method:
    """Baseline behaviour; subclasses override what they change (see the module docstring)."""

    name: str = "baseline"
    label: str = "Baseline (DynamicCache, full prompt)"
    model_changing: bool = False
    speed_note: str = ""
    simplification: str = ""  # how the method simplifies its paper ("" = as published); bench list
    forward_path: str = "standard"  # "standard" forces the HF forward; "auto" uses get_forward(lm)
    tf_chunked: bool = False  # True only where feeding the targets in one chunk is exact (plain cache)

    def __init__(self, **params: Any) -> None:
        self.params: dict = dict(params)
        self._std: Optional[StandardForward] = None
        self._std_model: Any = None

    # ---- setup / teardown -------------------------------------------------------------------
    def prepare(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> float:
        """One-off setup (calibration, hooks); returns the seconds it took (charged as aux)."""
        return 0.0

    def restore(self, lm: LoadedModel) -> None:
        """Undo every model change made by ``prepare`` (the model is shared)."""

    def prepared_on(self, lm: LoadedModel) -> bool:
        """Whether this method's model change is on ``lm``'s model now (model-changing methods
        say; the rest have nothing to put on)."""
        return False

    @contextlib.contextmanager
    def active(self, lm: LoadedModel) -> Iterator[None]:
        """The model change for one call when the caller has not prepared the method (the
        harness prepares before each measurement and restores after it)."""
        if self.prepared_on(lm):
            yield
            return
        self.prepare(lm)
        try:
            yield
        finally:
            self.restore(lm)

    def use_suite(self, suite: Any) -> None:
        """Told which suite is about to be measured (a method that learns from the suite's
        held-out domain material, such as phrase merge, takes it here); most ignore it."""

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "model_changing": self.model_changing,
                "speed_note": self.speed_note, "simplification": self.simplification,
                "params": dict(self.params),
                "forward": self.forward_path}

    # ---- prompt -----------------------------------------------------------------------------
    def forward(self, lm: LoadedModel) -> Any:
        """The forward this method runs on: the standard HF path unless ``forward_path`` is auto."""
        if self.forward_path == "auto":
            return get_forward(lm)
        if self._std is None or self._std_model is not lm.model:
            self._std = StandardForward(lm.model)
            self._std_model = lm.model
        return self._std

    def document_text(self, lm: LoadedModel, q: Query) -> Optional[str]:
        """The context document as this method feeds it (pruning methods shorten it)."""
        return q.document

    def messages(self, q: Query, document: Optional[str]) -> list[dict[str, str]]:
        """Chat messages for a query: system, earlier turns (with their fixed replies from
        ``meta["replies"]``), then the document and the question as the last user message."""
        msgs: list[dict[str, str]] = []
        if q.system:
            msgs.append({"role": "system", "content": q.system})
        replies = list(q.meta.get("replies", []))
        for i, t in enumerate(q.turns):
            msgs.append({"role": "user", "content": t})
            msgs.append({"role": "assistant", "content": replies[i] if i < len(replies) else "OK."})
        msgs.append({"role": "user", "content": user_content(q.prompt, document)})
        return msgs

    def render_prompt(self, lm: LoadedModel, q: Query) -> list[int]:
        """The token ids this method feeds (after any pruning), chat template applied."""
        return render_chat(lm.tokenizer, self.messages(q, self.document_text(lm, q)))

    def shared_prefix_ids(self, lm: LoadedModel, q: Query) -> list[int]:
        """The part of the prompt that an earlier turn or an earlier question on the same
        document has already put in a cache: everything before the question text."""
        doc = self.document_text(lm, q)
        msgs = self.messages(q, doc)
        chat = split_chat(lm.tokenizer, msgs)
        full = chat_ids(lm.tokenizer, chat)
        last = len(msgs) - 1
        prefix = chat.head(last)  # encoded by the same rule as the full prompt
        head = Piece(user_content("", doc) if doc else "", "user", last)
        pre = chat_ids(lm.tokenizer, ChatText(prefix.pieces + [head], chat.has_template))
        n = 0
        while n < min(len(pre), len(full)) and pre[n] == full[n]:
            n += 1
        # keep at least one token to prefill: the first logits must come from a forward
        return full[:min(n, len(full) - 1)]

    # ---- generation -------------------------------------------------------------------------
    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        """A fresh cache with the whole prompt pending (baseline)."""
        fwd = self.forward(lm)
        return GenState(fwd=fwd, cache=fwd.new_cache(), pending=list(prompt_ids), pos=0,
                        prompt_tokens_in=len(prompt_ids))

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        """Feed ``ids`` after the cache; fp32 logits (len(ids) if keep == 0 else keep, V)."""
        t = torch.tensor([ids], dtype=torch.long, device=lm.torch_device)
        out = st.fwd.logits(t, st.cache, keep=keep)[0]
        st.pos += len(ids)
        return out

    def detokenizer(self, lm: LoadedModel) -> Any:
        """What turns this method's generated ids into text (the decode pipeline's stop strings
        and the answer): the tokenizer, unless the method has ids of its own (phrase merge)."""
        return lm.tokenizer

    def base_token_ids(self, ids: list[int]) -> list[int]:
        """Generated ids in the model's original vocabulary (for the first-divergence index);
        a method with its own vocabulary (phrase merge) expands its new ids."""
        return ids

    def kv_bytes(self, st: GenState) -> int:
        """Bytes the cache holds now, summed from its tensors."""
        return int(st.fwd.cache_bytes(st.cache))

    def kv_bytes_peak(self, st: GenState) -> Optional[int]:
        """Peak KV bytes during the run when the method knows it (dequantized copies …)."""
        return None

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *,
            cancel: Optional[CancelToken] = None,
            sampling: Optional[SamplingConfig] = None, fixed_length: bool = False) -> MethodOutput:
        """Generation, timed: prefill (TTFT) then one token per step until EOS or
        ``max_new_tokens``. Greedy unless ``sampling`` says otherwise; tokens are chosen by the
        decode pipeline every generation uses (engine/lm/sampling.py, its history = the
        rendered prompt), whatever this method does to the cache in ``feed``.

        ``fixed_length``: decode exactly ``max_new_tokens`` steps whatever the answer's length
        (past EOS the loop goes on), so every method's time and memory are figures at the same
        number of new tokens and a shorter answer cannot pass for a saving; the answer returned
        (ids, text) is still the one that ends at EOS, and ``cost.answer_tokens`` its length.
        Memory is measured beside the counted bytes (engine/bench/memory.py): the cache's real
        allocation and the bytes written into it per generated token (the meter's own time is
        left out of the timings)."""
        from engine.bench.memory import CopyMeter, allocated_bytes

        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
        prompt = self.render_prompt(lm, q)
        if not prompt:
            raise InputError(f"query {q.id!r} renders to an empty prompt")
        st = self.new_state(lm, q, prompt)
        if st.pos + len(st.pending) + max_new_tokens > lm.context_length:
            raise ContextOverflow(
                f"query {q.id!r}: {st.pos + len(st.pending)} prompt tokens + {max_new_tokens} new "
                f"> context length {lm.context_length}")
        cfg = (sampling or SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)).validate()
        pipe = LogitsPipeline(cfg, lm.torch_device).start([prompt])
        stops = StopCriteria(cfg, lm.eos_ids, self.detokenizer(lm), cancel=cancel,
                             max_new_tokens=max_new_tokens)
        meter = CopyMeter()
        effective = len(st.pending)
        t0 = time.perf_counter()
        logits = self.feed(lm, st, st.pending, keep=1)[-1:]
        st.pending = []
        tok = pipe.choose(logits)
        t_first = time.perf_counter()
        meter.start(st.cache)
        kv_peak_seen = self.kv_bytes(st)
        decoded = 1            # tokens chosen so far (the answer's and, past EOS, the rest)
        answer_done = False
        while True:
            if not answer_done:
                answer_done = stops.push(0, int(tok))[1] is not None
            if decoded >= max_new_tokens or (answer_done and not fixed_length):
                break
            stops.check_cancel()
            pipe.advance(tok)
            tok = pipe.choose(self.feed(lm, st, [int(tok)], keep=1)[-1:])
            meter.step(st.cache)
            decoded += 1
        out = stops.token_ids(0)
        t_end = time.perf_counter() - meter.seconds
        decode_s = t_end - t_first
        stored = self.kv_bytes(st)
        peak = self.kv_bytes_peak(st)
        allocated = allocated_bytes(st.cache)
        # the compressor (prompt pruning) runs before the first forward: its seconds are charged
        # to time-to-first-token and total, and also shown on their own as aux_s
        aux = float(st.info.pop("aux_s", 0.0))
        n = decoded if fixed_length else len(out)
        cost = {
            "prompt_tokens_in": st.prompt_tokens_in,
            "prompt_tokens_effective": effective,
            "new_tokens": n,
            "answer_tokens": len(out),
            "fixed_length": bool(fixed_length),
            "prefill_s": t_first - t0 + aux,
            "decode_tok_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else None,
            "total_s": t_end - t0 + aux,
            "kv_bytes_stored": stored,
            "kv_bytes_peak": peak if peak is not None else max(stored, kv_peak_seen),
            "kv_bytes_allocated": max(allocated, meter.peak_allocated) if allocated else None,
            "kv_copy_bytes_per_token": meter.per_token(),
            "aux_s": aux,
        }
        return MethodOutput(token_ids=out, text=stops.text(0), cost=cost, extra=dict(st.info))

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Optional[CancelToken] = None) -> torch.Tensor:
        """(T, V) fp32 log-probs of each target position given this method's prompt and the
        previous target tokens. Targets are fed one token at a time, exactly as in generation,
        so methods whose cache changes per step (quantized, evicting) are scored as they run;
        methods over a plain exact cache set ``tf_chunked`` and feed them in one forward."""
        if not target_ids:
            return torch.empty(0, lm.model.config.vocab_size)
        prompt = self.render_prompt(lm, q)
        st = self.new_state(lm, q, prompt)
        rows = [self.feed(lm, st, st.pending, keep=1)[-1]]
        st.pending = []
        if self.tf_chunked:
            if len(target_ids) > 1:
                check(cancel)
                rest = self.feed(lm, st, [int(t) for t in target_ids[:-1]], keep=0)
                rows.extend(rest.unbind(0))
            return torch.log_softmax(torch.stack(rows).float(), dim=-1)
        for tok in target_ids[:-1]:
            check(cancel)
            rows.append(self.feed(lm, st, [int(tok)], keep=1)[-1])
        return torch.log_softmax(torch.stack(rows).float(), dim=-1)

    def fidelity_logprobs(self, lm: LoadedModel, q: Query, ref_ids: list[int], *,
                          cancel: Optional[CancelToken] = None) -> tuple[torch.Tensor, list[int]]:
        """The rows the fidelity KL compares with the baseline's: (R, V) log-probs over the
        model's original vocabulary and, for each row, the position in ``ref_ids`` (the
        baseline's continuation) whose next-token distribution it is. Every position here; a
        method that tokenizes differently (phrase merge) returns only the comparable ones."""
        lp = self.teacher_forced_logprobs(lm, q, ref_ids, cancel=cancel)
        return lp, list(range(lp.shape[0]))

    def answer_nll(self, lm: LoadedModel, q: Query, answer: str, *,
                   cancel: Optional[CancelToken] = None) -> Optional[float]:
        """Mean NLL (nats/token) of the reference answer after this method's prompt."""
        ids = encode_user_text(lm.tokenizer, answer)
        if not ids:
            return None
        lp = self.teacher_forced_logprobs(lm, q, ids, cancel=cancel)
        idx = torch.tensor(ids, dtype=torch.long).view(-1, 1)
        return float(-lp.gather(1, idx).mean())

    def nll_bits_per_byte(self, lm: LoadedModel, text: str, *,
                          cancel: Optional[CancelToken] = None) -> Optional[dict]:
        """Held-out text NLL through the model as this method leaves it (hooks, merged vocab):
        {"nll" nats/token, "bpb" bits per UTF-8 byte, "ppl", "tokens", "bytes"}."""
        return text_nll(lm, self.forward(lm), encode_user_text(lm.tokenizer, text), text,
                        cancel=cancel)


# ---- helpers shared by methods ---------------------------------------------------------------
def user_content(prompt: str, document: Optional[str]) -> str:
    """The last user message: document first (so a cache of it serves many questions)."""
    if document:
        return f"Document:\n{document}\n\nQuestion: {prompt}"
    return prompt


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat-templated conversation, ending with the assistant header: the one
    splitter every chat path uses (``engine/lm/templates.split_chat``, its plain fallback)."""
    return chat_ids(tokenizer, split_chat(tokenizer, messages))


def text_nll(lm: LoadedModel, fwd: Any, ids: list[int], text: str, *,
             cancel: Optional[CancelToken] = None, window: int = 512) -> Optional[dict]:
    """Teacher-forced NLL of ``ids`` in non-overlapping windows (each starts fresh)."""
    if len(ids) < 2:
        return None
    total = 0.0
    count = 0
    window = max(2, min(window, lm.context_length))
    for s in range(0, len(ids) - 1, window):
        check(cancel)
        chunk = ids[s:s + window + 1]
        if len(chunk) < 2:
            break
        t = torch.tensor([chunk[:-1]], dtype=torch.long, device=lm.torch_device)
        logits = fwd.logits(t, fwd.new_cache(), keep=0)[0]
        lp = torch.log_softmax(logits.float(), dim=-1)
        tgt = torch.tensor(chunk[1:], dtype=torch.long, device=lp.device).view(-1, 1)
        total += float(-lp.gather(1, tgt).sum())
        count += len(chunk) - 1
    nbytes = len(text.encode("utf-8"))
    nll = total / count
    return {"nll": nll, "bpb": total / (math.log(2) * nbytes) if nbytes else None,
            "ppl": math.exp(nll), "tokens": count, "bytes": nbytes}
