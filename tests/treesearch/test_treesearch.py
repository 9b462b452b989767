"""MaxEnt tree search end to end (search loop, batched rollouts, tree): DTS consistency on a toy LM,
search on the tiny model, KV resume exactness, determinism, cancel and failing rewards."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.errors import ContextOverflow, InputError
from engine.progress import CancelToken
from engine.treesearch.policy import policy
from engine.treesearch.rewards import Completion, Reward, parse_reward
from engine.lm.forward import get_forward
from engine.treesearch.rollout import RolloutDriver
from engine.treesearch.search import TreeConfig, run_tree_search
from engine.treesearch.node import tree_signature
from engine.treesearch.tree import Tree


def resume_logits(lm: Any, node: Any, tokens: list[int], prompt_len: int) -> torch.Tensor:
    """Reads a node's stored KV: logits (V,) after feeding ``tokens`` from it, the way rollouts
    resume (fork of the stored trajectory; mask and explicit positions when it holds pads)."""
    fwd = get_forward(lm)
    kv = node.kv
    if kv is None:
        raise ValueError("node has no KV handle")
    cache = fwd.fork(kv.cache, keep=kv.keep)
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=lm.torch_device)
    mask = pos = None
    if kv.mask is not None:
        mask = torch.cat([kv.mask[:kv.keep], torch.ones(len(tokens), dtype=kv.mask.dtype,
                                                          device=kv.mask.device)]).view(1, -1)
        pos = (prompt_len + node.depth + torch.arange(len(tokens), device=ids.device)).view(1, -1)
    return fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[0, -1]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A private tiny Llama on the standard forward (its caches are inspected directly)."""
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=3)
    lm.engine_path = "standard"
    return lm


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return tokenizer.apply_chat_template([{"role": "user", "content": "Write about the moon."}],
                                         add_generation_prompt=True, return_dict=False)


def fn_reward(fn: Any, spec: str = "test") -> Reward:
    return Reward("plugin", spec, spec, runs_user_code=True, _fn=fn)


# ---------------------------------------------------------------- DTS consistency on a toy LM

class ToyForward:
    """A tiny exact "LM": next-token logits are a fixed function of the real (unpadded) prefix.
    Caches are lists of (token, is_real) per row, following the Forward contract (fork copies)."""

    name = "toy"

    def __init__(self, table: dict[tuple[int, ...], list[float]], prompt_len: int) -> None:
        self.table = table
        self.P = prompt_len

    def new_cache(self, batch: int = 1) -> Any:
        return SimpleNamespace(rows=[])

    def logits(self, ids, cache, *, position_ids=None, attention_mask=None, keep=1):
        if not cache.rows:
            cache.rows = [[] for _ in range(ids.shape[0])]
        out = []
        for b in range(ids.shape[0]):
            row = cache.rows[b]
            for j, t in enumerate(ids[b].tolist()):
                real = 1 if attention_mask is None else int(attention_mask[b, len(row)])
                row.append((t, real))
            gen = tuple(t for t, real in row if real)[self.P:]
            out.append(self.table[gen])
        return torch.tensor(out, dtype=torch.float32).view(len(out), 1, -1)

    def cache_len(self, cache):
        return len(cache.rows[0]) if cache.rows else 0

    def fork(self, cache, keep=None):
        return SimpleNamespace(rows=[list(r[:keep]) for r in cache.rows])

    def repeat(self, cache, n):
        return SimpleNamespace(rows=[list(r) for r in cache.rows for _ in range(n)])

    def select(self, cache, rows):
        return SimpleNamespace(rows=[list(cache.rows[i]) for i in rows.tolist()])

    def cache_bytes(self, cache):
        return 0


def _toy_lm(table, prompt_len):
    fwd = ToyForward(table, prompt_len)
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=False: ",".join(map(str, ids)))
    return SimpleNamespace(tokenizer=tok, eos_ids=[3], context_length=64, torch_device=torch.device("cpu"),
                           engine_path="fast", _forward=fwd, _forward_path="fast", name="toy")


def test_dts_sampling_is_consistent_on_a_toy_lm():
    q_root = [0.5, 0.3, 0.2]
    q_next = {0: [0.6, 0.3, 0.1], 1: [0.2, 0.2, 0.6], 2: [0.1, 0.45, 0.45]}
    lg = lambda ps: [math.log(p) for p in ps] + [-1e9]  # token 3 (EOS) never drawn
    table = {(): lg(q_root)}
    for a in range(3):
        table[(a,)] = lg(q_next[a])
    r = {(a, b): ((3 * a + 5 * b) % 7) / 6 for a in range(3) for b in range(3)}
    lam = 2.0
    target = {y: q_root[y[0]] * q_next[y[0]][y[1]] * math.exp(lam * r[y]) for y in r}
    z = sum(target.values())
    rw = fn_reward(lambda c: r[tuple(int(x) for x in c.text.split(","))])

    def descent_law(tree):  # the exact distribution of Boltzmann descent on the final tree
        w = lambda n: n.m * math.exp(lam * n.value)
        top = sum(w(c) for c in tree.root.children.values())
        out = {}
        for a, c in tree.root.children.items():
            z2 = sum(w(d) for d in c.children.values())
            for b, d in c.children.items():
                out[(a, b)] = w(c) / top * w(d) / z2
        return out

    tvs = []
    for n in (300, 5000):
        cfg = TreeConfig(rollouts=n, horizon=2, lam=lam, temperature=1.0, top_p=1.0, mode="sample",
                         n_samples=4000, batch=16, widening=2, widening_alpha=0.8, seed=0)
        res = run_tree_search(_toy_lm(table, prompt_len=2), [1, 2], rw, cfg)
        assert res.stop_reason == "completed" and res.rollouts_done == n
        law = descent_law(res.tree)
        tvs.append(0.5 * sum(abs(law.get(y, 0.0) - target[y] / z) for y in r))
    assert tvs[1] < 0.07 and tvs[1] < tvs[0], tvs  # consistent: the error shrinks with rollouts
    # the answers are draws from that law, each with its own sequence's reward
    emp = Counter(tuple(s.token_ids) for s in res.samples)
    assert 0.5 * sum(abs(emp[y] / len(res.samples) - law.get(y, 0.0)) for y in r) < 0.04
    assert all(s.reward == r[tuple(s.token_ids)] for s in res.samples)
    # the root value estimates V = (1/λ) log E_q[exp(λ r)]
    v_true = math.log(sum(q_root[a] * q_next[a][b] * math.exp(lam * r[(a, b)]) for a, b in r)) / lam
    assert abs(res.root_value - v_true) < 0.05


def test_rows_that_finish_leave_the_batch():
    """One round of 8 rollouts on a toy LM where EOS is likely: every decode call carries only
    the rows still running (batch sizes never grow, and sum to the tokens fed)."""
    lg = lambda ps: [math.log(p) if p > 0 else -1e9 for p in ps]
    table: dict = {}
    for d in range(6):
        for pre in itertools.product(range(3), repeat=d):
            table[pre] = lg([0.3, 0.3, 0.4, 0.0] if d == 0 else [0.25, 0.25, 0.2, 0.3])
    lm = _toy_lm(table, prompt_len=2)
    calls: list[int] = []
    real = lm._forward.logits

    def logged(ids, cache, **kw):
        calls.append(ids.shape[0] if ids.shape[1] == 1 else -1)
        return real(ids, cache, **kw)

    lm._forward.logits = logged
    cfg = TreeConfig(rollouts=8, horizon=6, top_p=1.0, batch=8, widening=3, mode="sample", seed=1)
    res = run_tree_search(lm, [1, 2], fn_reward(lambda c: 0.5), cfg)
    assert res.batches == 1 and res.rollouts_done == 8
    decode = calls[2:]  # after the prompt prefill and the start-node feed
    assert decode == sorted(decode, reverse=True) and decode[0] <= 8 and decode[-1] < decode[0]
    assert sum(decode) == res.generated_tokens - 8  # each row feeds all but its last token


def test_eos_drawn_by_widening_is_a_terminal_scored_without_rollout():
    """EOS (token 3) is likely at every node, so widening often draws it as a new child: that
    child is terminal, its completion never contains EOS in the middle, and nothing is decoded
    past an EOS (every completion the reward sees is EOS-free)."""
    lg = lambda ps: [math.log(p) for p in ps]
    table: dict = {}
    for d in range(5):
        for pre in itertools.product(range(3), repeat=d):
            table[pre] = lg([0.2, 0.2, 0.2, 0.4])
    seen: list[tuple[int, ...]] = []

    def rew(c):
        seen.append(tuple(c.token_ids))
        return len(c.token_ids) / 4

    cfg = TreeConfig(rollouts=60, horizon=4, top_p=1.0, batch=4, widening=3, widening_alpha=0.5,
                     mode="search", seed=3)
    res = run_tree_search(_toy_lm(table, prompt_len=2), [1, 2], fn_reward(rew), cfg)
    assert res.stop_reason == "completed"
    assert seen and all(3 not in ids for ids in seen), [ids for ids in seen if 3 in ids][:3]
    eos_nodes = [n for n in _all_nodes(res.tree) if n.token == 3]
    assert eos_nodes and all(n.eos and n.done and not n.children for n in eos_nodes)
    # some EOS children were created by widening at an inner node (not at the end of a rollout)
    assert any(n.parent is not res.tree.root and n.m >= 1 for n in eos_nodes)


# ---------------------------------------------------------------- the tiny model

def test_search_mode_finds_the_known_best_continuation(tiny, prompt):
    """Reward: the fraction of the 3 tokens that differ from the greedy choice at their state.
    The best reward, 1, is reachable (every top-p support has ≥ 2 tokens) and the greedy answer
    scores 0; under q a rollout reaches 1 with probability ≈ 0.41·0.07·0.21 ≈ 0.6 %."""
    from engine.lm.forward import get_forward

    fwd = get_forward(tiny)
    memo: dict[tuple[int, ...], int] = {}

    def greedy(state: tuple[int, ...]) -> int:
        if state not in memo:
            ids = torch.tensor([list(prompt) + list(state)])
            memo[state] = int(fwd.logits(ids, fwd.new_cache(), keep=1)[0, -1].argmax())
        return memo[state]

    def r(c: Completion) -> float:
        ids = tuple(c.token_ids)
        return sum(1 for i in range(len(ids)) if ids[i] != greedy(ids[:i])) / 3

    for seed in (0, 1, 2):
        cfg = TreeConfig(rollouts=48, horizon=3, temperature=0.3, top_p=0.98, widening=3,
                         widening_alpha=0.5, batch=4, mode="search", seed=seed)
        res = run_tree_search(tiny, prompt, fn_reward(r), cfg)
        assert res.best_reward == 1.0, seed
        ids = res.best.token_ids
        assert len(ids) == 3 and all(ids[i] != greedy(tuple(ids[:i])) for i in range(3))
        assert res.best_text == tiny.tokenizer.decode(ids)


def _all_nodes(t: Tree):
    stack = [t.root]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children.values())


def _snapshot(cache) -> list[torch.Tensor]:
    if hasattr(cache, "layers"):  # transformers DynamicCache (standard forward)
        return [x.clone() for lay in cache.layers for x in (lay.keys, lay.values)]
    n = cache.length  # the lean path's buffer: the positions this cache owns
    return [cache.store.k[:, :, :, :n].clone(), cache.store.v[:, :, :, :n].clone()]


@pytest.fixture(scope="module", params=["standard", "fast"])
def tiny_any(request, tokenizer):
    """The tiny model on each forward implementation (the lean one where it supports Llama)."""
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=3)
    lm.engine_path = request.param
    return lm


def test_resumed_logits_equal_uncached_forward_and_caches_stay_intact(tiny_any, prompt):
    from engine.lm.forward import StandardForward

    tiny = tiny_any
    rw = parse_reward("words:the,moon")
    cfg = TreeConfig(rollouts=16, horizon=6, temperature=1.0, top_p=0.9, widening=3, batch=4,
                     mode="sample", seed=4)
    stacked = []
    real = RolloutDriver._start_stacked

    def counted(self, rows, distinct, anchors):
        stacked.append(len(distinct))
        return real(self, rows, distinct, anchors)

    RolloutDriver._start_stacked = counted
    try:
        res = run_tree_search(tiny, prompt, rw, cfg)
    finally:
        RolloutDriver._start_stacked = real
    assert res.padded_batches > 0, "the run should have batched rows from different depths"
    # rows from different branches resumed from their own caches, stacked into one batch
    assert stacked and max(stacked) > 1, stacked
    nodes = [n for n in _all_nodes(res.tree) if n.kv is not None]
    trajs = {id(n.kv.cache): n.kv.cache for n in nodes}
    before = {k: _snapshot(c) for k, c in trajs.items()}
    ref_fwd = StandardForward(tiny.model)  # uncached reference on the HF forward
    pairs = [(n, c) for n in nodes for c in n.children.values() if c.logp is not None]
    one_per_parent = list({id(n): (n, c) for n, c in pairs}.values())
    checked = 0
    for n, c in one_per_parent[:30]:  # each check costs two forwards
        got = resume_logits(tiny, n, [c.token], len(prompt))
        full = ref_fwd.logits(torch.tensor([prompt + c.tokens()]), ref_fwd.new_cache(), keep=1)[0, -1]
        assert torch.allclose(got, full, atol=1e-4), (got - full).abs().max()
        # the distribution stored at creation (from a batched, maybe padded rollout) is q
        _, ((rid, rlp),) = policy(full.view(1, -1), cfg.temperature, cfg.top_p, None, sample=False)
        ids, lp = c.logp
        a, b = ids.long().argsort(), rid.long().argsort()
        if len(ids) == len(rid) and torch.equal(ids[a], rid[b]):
            assert torch.allclose(lp[a], rlp[b], atol=1e-4)
        else:  # 1e-6 noise can move the top-p edge of a flat q by one token (or swap one)
            assert len(set(ids.tolist()) ^ set(rid.tolist())) <= 2
        checked += 1
    assert checked >= 10
    for k, c in trajs.items():
        after = _snapshot(c)
        assert all(torch.equal(a, b) for a, b in zip(before[k], after))


def test_same_seed_same_tree(tiny, prompt):
    rw = parse_reward("length:2-4t")
    cfg = TreeConfig(rollouts=12, horizon=5, temperature=2.5, batch=3, mode="sample", seed=11)
    a = run_tree_search(tiny, prompt, rw, cfg)
    b = run_tree_search(tiny, prompt, rw, cfg)
    assert tree_signature(a.tree.root) == tree_signature(b.tree.root)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    c = run_tree_search(tiny, prompt, rw, TreeConfig(**{**cfg.__dict__, "seed": 12}))
    assert tree_signature(c.tree.root) != tree_signature(a.tree.root)


def test_batched_equals_naive_reencoding_for_one_rollout_per_round(tiny, prompt):
    rw = parse_reward("length:1-3t")
    # a q that is not flat: with thousands of near-equal tokens, 1e-6 noise between the cached and
    # uncached forwards can move the top-p edge by one token and the trees then diverge
    base = dict(rollouts=8, horizon=4, temperature=0.5, top_p=0.9, batch=1, mode="search", seed=5)
    a = run_tree_search(tiny, prompt, rw, TreeConfig(**base))
    b = run_tree_search(tiny, prompt, rw, TreeConfig(**base, reuse_kv=False))
    assert tree_signature(a.tree.root) == tree_signature(b.tree.root)
    assert b.prefill_tokens > a.prefill_tokens


def test_cancel_mid_search_returns_best_so_far(tiny, prompt):
    tok = CancelToken()
    seen: list[Any] = []

    def progress(p):
        if p.step >= 3 and p.metrics.get("best_reward") is not None:
            seen.append(p.metrics["best_reward"])
            tok.cancel("test")

    rw = parse_reward("length:3-5t")
    cfg = TreeConfig(rollouts=40, horizon=8, temperature=2.0, batch=1, seed=2)
    res = run_tree_search(tiny, prompt, rw, cfg, progress=progress, cancel=tok)
    assert res.stop_reason == "cancelled"
    assert 3 <= res.rollouts_done < 40
    assert res.best is not None and res.best_reward == pytest.approx(seen[0], abs=1e-4)
    assert rw.score(Completion(res.best_text, tuple(res.best.token_ids))) == res.best_reward
    assert all(n.value is not None for n in _all_nodes(res.tree))  # no half-made nodes left


class _CancelMidRollout(CancelToken):
    """Cancels on the ``after``-th check once armed: lands inside a round's decoding."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.armed, self.after, self.n = False, after, 0

    def check(self) -> None:
        if self.armed:
            self.n += 1
            if self.n >= self.after:
                self.cancel("test")
        super().check()


def test_cancel_during_a_round_keeps_finished_rollouts_and_partial_text(tiny, prompt):
    tok = _CancelMidRollout(after=4)
    decoded: list[int] = []

    def progress(p):
        if p.message.startswith("rollout ") and p.step == 3:
            tok.armed = True

    rw = parse_reward("length:3-5t")
    cfg = TreeConfig(rollouts=40, horizon=24, temperature=2.0, top_p=1.0, batch=2, seed=1)
    res = run_tree_search(tiny, prompt, rw, cfg, progress=progress, cancel=tok)
    assert res.stopped and res.stop_reason == "cancelled"
    # the round of two that was decoding is dropped from the tree; the finished ones stay
    assert res.rollouts_done in (3, 4)
    assert res.tree.root.visits == res.rollouts_done
    assert sum(1 for n in _all_nodes(res.tree) if n.done) >= 1
    assert all(n.value is not None for n in _all_nodes(res.tree))
    assert res.best is not None
    # the interrupted round's text is kept, unscored: each is a prefix-free decode of tokens
    assert 1 <= len(res.partial) <= 2 and all(isinstance(t, str) and t for t in res.partial)
    assert res.to_dict()["partial"] == res.partial
    # an uninterrupted run has no partial text
    done = run_tree_search(tiny, prompt, rw, TreeConfig(rollouts=3, horizon=6, seed=1))
    assert not done.stopped and done.partial == []


def test_raising_reward_stops_cleanly_with_partial_result(tiny, prompt):
    calls = {"n": 0}

    def flaky(c: Completion) -> float:
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("scoring service down")
        return 0.5

    cfg = TreeConfig(rollouts=20, horizon=4, temperature=2.0, batch=2, seed=0)
    res = run_tree_search(tiny, prompt, fn_reward(flaky, "plugin:x:y"), cfg)
    assert res.stop_reason == "reward_error"
    assert "scoring service down" in res.error and "RuntimeError" in res.error
    assert res.rollouts_done == 4 and res.best_reward == 0.5
    assert all(n.value is not None for n in _all_nodes(res.tree))


def test_out_of_range_reward_is_an_error(tiny, prompt):
    res = run_tree_search(tiny, prompt, fn_reward(lambda c: 1.5), TreeConfig(rollouts=3, horizon=2))
    assert res.stop_reason == "reward_error" and "[0, 1]" in res.error and res.best is None


def test_progress_reports_live_view_metrics(tiny, prompt):
    got = []
    cfg = TreeConfig(rollouts=6, horizon=4, temperature=2.0, batch=3, seed=0)
    run_tree_search(tiny, prompt, parse_reward("length:1-2t"), cfg, progress=got.append)
    per = [p for p in got if p.phase == "tree" and p.message.startswith("rollout")]
    assert [p.step for p in per] == list(range(1, 7)) and per[-1].total == 6
    m = per[-1].metrics
    for key in ("nodes", "depth", "best_reward", "best_text", "tok_s", "root_value", "root_children",
                "kv_bytes"):
        assert key in m
    tok, visits, value = m["root_children"][0]
    assert isinstance(tok, str) and visits >= 1


def test_bad_config_and_prompt(tiny, prompt):
    rw = parse_reward("words:a")
    with pytest.raises(InputError, match="rollouts"):
        run_tree_search(tiny, prompt, rw, TreeConfig(rollouts=0))
    with pytest.raises(ContextOverflow, match="horizon"):
        run_tree_search(tiny, prompt, rw, TreeConfig(horizon=tiny.context_length))
    with pytest.raises(InputError, match="prompt"):
        run_tree_search(tiny, [], rw, TreeConfig())
    for bad in (dict(lam=0.0), dict(temperature=0.0), dict(top_p=0.0), dict(mode="best"),
                dict(widening=0), dict(exploration=-1.0), dict(batch=0), dict(max_depth=0),
                dict(reuse_kv=False, batch=2)):
        with pytest.raises(InputError):
            TreeConfig(**bad).validate()


def test_depth_cap_and_sample_mode_answers_are_real_rollouts(tiny, prompt):
    rw = parse_reward("length:4-6t")
    cfg = TreeConfig(rollouts=10, horizon=6, max_depth=2, temperature=2.0, batch=4, mode="sample",
                     n_samples=5, seed=3)
    res = run_tree_search(tiny, prompt, rw, cfg)
    assert res.max_depth <= 2 and len(res.samples) == 5
    for s in res.samples:
        assert s.reward == rw.score(Completion(s.text, tuple(s.token_ids)))
        assert len(s.token_ids) <= 6
    d = res.to_dict()
    assert "tree" not in d and d["best"]["reward"] == res.best_reward


def test_progress_inside_the_first_round(tiny, prompt):
    """One round holds every rollout: before any rollout is scored the reports name the round
    and its token, and their done fraction moves (the bar is not stuck at 0/6 for the whole
    search); the reward and the prefill are named before them."""
    got = []
    cfg = TreeConfig(rollouts=6, horizon=8, temperature=2.0, batch=6, seed=0)
    run_tree_search(tiny, prompt, parse_reward("length:1-2t"), cfg, progress=got.append)
    msgs = [p.message for p in got]
    assert msgs[0].startswith("preparing the reward") and msgs[1].startswith("prefilling the prompt")
    inside = [p for p in got if p.message.startswith("round 1: decoding")]
    assert inside and all(p.step == 0 for p in inside)
    assert "token " in inside[0].message and "/8" in inside[0].message
    fr = [p.metrics["done_fraction"] for p in inside]
    assert 0 < fr[0] <= 1 and fr == sorted(fr)
