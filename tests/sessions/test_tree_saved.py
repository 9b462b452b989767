"""Every answer variant is saved as it happens and comes back after a restart: the whole tree
(regenerated, forced and edited variants at a middle turn), the path that was shown, each
answer's per-token facts; a message stopped during its prefill leaves every saved row as it was;
a schema-1 database is upgraded in place."""
from __future__ import annotations

import sqlite3

from engine.lm import branching as br
from engine.lm.config import SamplingConfig
from engine.progress import CancelToken
from engine.sessions.persist import PersistentChat
from engine.sessions.snapshot import SnapshotStore
from engine.sessions.store import SessionStore

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


def _fresh(tokenizer):
    from engine.lm.tiny import tiny_llama

    return tiny_llama(tokenizer, seed=0)


def _open(lm, tmp_path):
    return PersistentChat(lm, "s", store=SessionStore(tmp_path / "s.db"),
                          snapshots=SnapshotStore(tmp_path / "snap"), system="Be brief.",
                          sampling=GREEDY)


def _shape(s):
    """What a reopened session must give back, node by node (ids are positions in nodes)."""
    return [(t.user, t.answer, t.answer_ids, t.how, t.state, t.prev, t.source, t.fork_at,
             [i.id for i in t.infos], [round(i.logprob, 4) for i in t.infos]) for t in s.nodes]


def test_variants_at_a_middle_turn_survive_a_restart(tokenizer, tmp_path):
    chat = _open(_fresh(tokenizer), tmp_path)
    for m in ("Hello there", "Tell me more", "And a third thing"):
        chat.send(m)
    s = chat.session
    chat.regenerate(1, sampling=SamplingConfig(max_new_tokens=8, temperature=1.2, seed=3))
    regen = s.turns[-1]
    chat.force(1, 2, regen.infos[2].alternatives[1].id)
    chat.edit(1, "Tell me less")
    chat.show(regen.id)  # the path shown last is the one that comes back
    shape, path = _shape(s), [t.id for t in s.path]
    chat.close()

    again = _open(_fresh(tokenizer), tmp_path)
    s2 = again.session
    assert again.report.how in ("snapshot", "recomputed")
    assert _shape(s2) == shape and [t.id for t in s2.path] == path
    assert [t.how for t in s2.nodes] == ["answer"] * 3 + ["regenerate", "force", "edit"]
    t1 = s2.nodes[1]
    assert br.turn_variants(s2.nodes, t1.id) == [1, 3, 4, 5]
    assert br.label(s2.nodes, 4, 2) == "< 2/2 >"
    # the reopened session goes on from the shown path, and keeps saving
    r = again.send("Go on")
    assert not r.notes or all("not saved" not in n for n in r.notes)
    assert [t.user for t in again.store.get("s").turns] == ["Hello there", "Tell me more", "Go on"]
    assert len(again.store.nodes("s")) == 7
    assert again.store.get("s").model_spec == s2.lm.spec  # what to load to go on with it


def _rows(path):
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("sessions", "branches", "turns")}
    finally:
        db.close()


def test_a_message_stopped_in_its_prefill_leaves_every_saved_row(tokenizer, tmp_path):
    chat = _open(_fresh(tokenizer), tmp_path)
    chat.send("Hello there")
    chat.close()
    before = _rows(tmp_path / "s.db")
    chat = _open(_fresh(tokenizer), tmp_path)
    tok = CancelToken()

    def progress(p):  # Esc during the prefill of a long paste
        if p.phase == "prefill":
            tok.cancel("user")

    r = chat.send("word " * 400, progress=progress, cancel=tok)
    assert r.discarded
    tok2 = CancelToken()  # an edited message (a variant of turn 1), stopped the same way
    r = chat.edit(0, "word " * 400, cancel=tok2,
                  progress=lambda p: tok2.cancel("user") if p.phase == "prefill" else None)
    assert r.discarded
    chat.close()
    after = _rows(tmp_path / "s.db")
    assert after == before
    chat = _open(_fresh(tokenizer), tmp_path)
    m = chat.store.get("s").turns[-1].metrics
    assert m["stop_reason"] != "cancelled" and m["new_tokens"] > 0


def test_a_schema_1_database_is_upgraded(tmp_path):
    st = SessionStore(tmp_path / "s.db")
    from engine.sessions.store import SavedTurn

    st.create("a", "m", "h", None, {})
    for i in range(3):
        st.save_turn("a", i, SavedTurn(f"q{i}", [i], f"a{i}", [i]), [i], 0, model_id="m",
                     weights_hash="h", sampling={})
    st.save_turn("a", 1, SavedTurn("q1", [1], "again", [7]), [7], 0, model_id="m",
                 weights_hash="h", sampling={})
    st.close()
    db = sqlite3.connect(tmp_path / "s.db")  # make it a schema-1 file: no tree columns
    for col in ("prev", "source", "fork_at", "how", "state", "infos"):
        db.execute(f"ALTER TABLE turns DROP COLUMN {col}")
    db.execute("ALTER TABLE sessions DROP COLUMN model_spec")
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.commit()
    db.close()
    st = SessionStore(tmp_path / "s.db")
    nodes = {n.key: n for n in st.nodes("a")}
    by_answer = {n.answer: n for n in nodes.values()}
    assert by_answer["a0"].prev is None and by_answer["a1"].prev == by_answer["a0"].key
    assert by_answer["a2"].prev == by_answer["a1"].key
    assert by_answer["again"].prev == by_answer["a0"].key
    assert [t.answer for t in st.get("a").turns] == ["a0", "again"]
    assert st.get("a").model_spec == ""  # not known for a session saved before schema 3
    assert st.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "3"
