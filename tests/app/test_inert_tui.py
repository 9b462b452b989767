"""Data the program did not write reaches the screen inert in the TUI: saved sessions whose name,
model id, system prompt, messages and answers carry escape sequences (an OSC 52 clipboard write,
screen clears, the 8-bit CSI, a bidi override) and markup (``[/]``, ``[/x]``, Textual's
``[$accent]`` and ``[B]``). The F7 list, the rename/delete status, the session opened into chat
(messages, answers, status, toast) are rendered and every text segment on the screen — what the
terminal is sent, besides Textual's own style and cursor sequences — is checked; the app stays up."""
from __future__ import annotations

from typing import Any, Iterator

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import DataTable

from app.engines import Engine
from app.widgets.chat_messages import AssistantMessage, UserMessage
from engine.inert import is_inert, printable
from engine.lm.config import SamplingConfig

from app_fakes import until

PAYLOAD = "\x1b]52;c;SGVsbG8=\x07\x1b[2J[/x][/][$accent]z[B]\x9b2J\u202e\\"


def _segments(obj: Any) -> Iterator[Segment]:
    if isinstance(obj, Strip):
        yield from obj
    elif isinstance(obj, Segment):
        yield obj
    else:
        for o in obj:
            yield from _segments(o)


def screen_text(app: Any) -> str:
    """The text of every non-control segment the compositor would send for the whole screen."""
    upd = app.screen._compositor.render_full_update()
    return "\n".join("".join(s.text for s in _segments(line) if not s.control) for line in upd.strips)


def assert_screen_inert(app: Any) -> str:
    shown = screen_text(app)
    assert is_inert(shown, multiline=True), repr([c for c in shown if not is_inert(c)][:20])
    for t in getattr(app, "toasts", []):
        assert is_inert(t, multiline=True), repr(t)
    return shown


def _seed_sessions(tokenizer: Any) -> list[str]:
    from engine.sessions.store import SavedTurn, SessionStore

    st = SessionStore()
    names = ["[/]", "second"]
    for name in names:
        st.create(name, f"model{PAYLOAD}", "not-these-weights", f"sys{PAYLOAD}", {})
        user, answer = f"first {PAYLOAD}", f"answer {PAYLOAD}"
        ids_u = tokenizer.encode(user, add_special_tokens=False)
        ids_a = tokenizer.encode(answer, add_special_tokens=False)
        st.save_turn(name, 0, SavedTurn(user, ids_u, answer, ids_a), ids_u + ids_a, 0,
                     model_id=f"model{PAYLOAD}", weights_hash="not-these-weights", sampling={})
    path = st.path
    st.close()
    import sqlite3  # a database written by something else: a name the store itself refuses

    with sqlite3.connect(path) as db:
        db.execute("UPDATE sessions SET name=? WHERE name='second'", (f"n{PAYLOAD}",))
    db.close()
    return names


async def test_sessions_and_chat_show_data_inert(make_app, tiny_lm):
    names = _seed_sessions(tiny_lm.tokenizer)
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.sampling = SamplingConfig(max_new_tokens=4, temperature=0.0)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        scr = app.screen
        table = scr.query_one("#session-table", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        # the rows' cells are drawn on a later refresh than the count: wait for the preview
        await until(pilot, lambda: "first \\x" in assert_screen_inert(app))
        shown = assert_screen_inert(app)
        # escaped, not lost (a long model id is cut to its column: its start is shown)
        assert "[/]" in shown and printable(f"model{PAYLOAD}")[:20] in shown

        # delete's "press d again" names the session; renaming shows it in the status line
        table.focus()
        table.move_cursor(row=scr.names.index("[/]"))
        await pilot.press("d")
        await pilot.pause()
        assert "[/]" in str(scr.query_one("#sessions-status").content)
        assert_screen_inert(app)
        await pilot.press("e")  # the Markdown export (read with cat or less -R) is inert too
        await until(pilot, lambda: scr.last_export is not None)
        md = scr.last_export.read_text(encoding="utf-8")
        assert is_inert(md, multiline=True) and "\\x1b]52;c;" in md
        assert_screen_inert(app)

        # open the session named [/] into chat: messages, answer, status and toast
        table.move_cursor(row=scr.names.index("[/]"))
        await pilot.press("enter")
        # saved with other weights: the screen names its model (inert) and offers the loaded one
        status = scr.query_one("#sessions-status")
        await until(pilot, lambda: "o: open it with" in str(status.render()))
        assert_screen_inert(app)
        await pilot.press("o")
        await until(pilot, lambda: app.current_mode == "chat")
        chat = app.screen
        await until(pilot, lambda: len(chat.query(UserMessage)) == 1
                    and chat.query(AssistantMessage) and chat.query(AssistantMessage)[0].text)
        await pilot.pause()
        shown = assert_screen_inert(app)
        assert "first " in shown and "\\x1b]52;c;" in shown
        assert chat.query(AssistantMessage)[0].text == f"answer {PAYLOAD}"  # kept raw for export
        assert app.is_running


async def test_dashboard_report_of_a_hostile_runs_file(make_app, tmp_path):
    """The dashboard's table, legend, footer and notes from a runs file whose labels, method,
    suite, model id, status and message carry the payload (and a line that is not JSON)."""
    import json
    from pathlib import Path

    from textual.widgets import Input

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl"
    recs = []
    for line in fixture.read_text(encoding="utf-8").split("\n"):
        try:
            recs.append(json.loads(line))
        except ValueError:
            pass
    for i, r in enumerate(recs):
        r["label"] = f"L{PAYLOAD}"
        r["suite"] = f"S{PAYLOAD}"
        r["model"]["id"] = f"M{PAYLOAD}"
        r["speed_note"] = f"N{PAYLOAD}"
        if i == 1:
            r.update(status="error", message=f"boom{PAYLOAD}")
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
                    + f"not json {PAYLOAD}\n", encoding="utf-8")
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: app.model_state in ("ready", "failed") and not app.runner.busy)
        await pilot.press("f5")
        await until(pilot, lambda: app.current_mode == "dashboard")
        scr = app.screen
        scr.query_one("#dash-out", Input).value = str(runs)
        await pilot.pause()
        scr.refresh_report(force=True, loud=True)
        table = scr.query_one("#dash-table", DataTable)
        await until(pilot, lambda: table.row_count >= 2 and not scr._reading)
        await pilot.pause()
        shown = assert_screen_inert(app)
        assert "\\x1b[2J" in shown  # shown escaped
        assert app.is_running
