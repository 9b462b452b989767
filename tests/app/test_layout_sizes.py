"""Every screen at 80×24 and 140×45 (issue 22, item 4), checked on the rendered screen rather
than against golden files: primary actions on screen or in the footer, labels and select values
whole, the chat transcript with rows to read, tables inside the width, check boxes that show
their state, and a footer that is not cut at 140 columns."""
from __future__ import annotations

import pytest
from textual.widgets import Button, Checkbox, DataTable, Footer, Label, Select

from app_fakes import FakeEngine, until
from app.widgets.checks import OFF, ON

SIZES = [(80, 24), (140, 45)]
SCREENS = [("f2", "chat"), ("f3", "attack"), ("f4", "search"), ("f5", "dashboard"),
           ("f6", "settings"), ("f7", "sessions"), ("f8", "models")]
#: per screen: buttons that must be on screen (or their key in the footer) at every size
PRIMARY = {"attack": {"#atk-run": "Run", "#atk-stop": "Stop", "#atk-export": "Export"},
           "search": {"#ts-run": "Run", "#ts-stop": "Stop", "#ts-export": "Export"},
           "dashboard": {"#dash-run": "Run", "#dash-stop": "Stop"},
           "chat": {"#send": "", "#stop": "Stop"}, "settings": {"#apply": "Apply"}}


def screen_text(app) -> list[str]:
    """The screen as the terminal shows it: one string per row."""
    strips = app.screen._compositor.render_strips()
    return ["".join(seg.text for seg in strip) for strip in strips]


def visible(app, widget) -> bool:
    """The widget is drawn whole inside the screen (not scrolled away, not clipped)."""
    try:
        geometry = app.screen.find_widget(widget)
    except Exception:  # noqa: BLE001 - NoWidget: not in the visible map
        return False
    region, size = geometry.region, app.screen.size
    return (region.width > 0 and region.height > 0 and geometry.visible_region == region
            and region.x >= 0 and region.y >= 0
            and region.right <= size.width and region.bottom <= size.height)


def footer_keys(app) -> list[str]:
    """The footer's entries drawn whole (their description or, grouped, their key)."""
    out = []
    footer = app.screen.query_one(Footer)
    for key in footer.query("FooterKey"):
        if visible(app, key):
            out.append(key.description or key.key_display)
    return out


async def open_screen(pilot, app, key: str, mode: str) -> None:
    await pilot.press(key)
    await until(pilot, lambda: app.current_mode == mode)
    await pilot.pause()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_every_screen_usable(make_app, size):
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        for key, mode in SCREENS:
            await open_screen(pilot, app, key, mode)
            scr = app.screen
            rows = screen_text(app)
            text = "\n".join(rows)
            flat = " ".join(r.strip() for r in rows)
            # primary actions: on screen, or their key in the footer
            keys = footer_keys(app)
            for sel, word in PRIMARY.get(mode, {}).items():
                b = scr.query_one(sel, Button)
                assert visible(app, b) or (word and any(word in k for k in keys)), (mode, sel, keys)
            # labels whole: every form label's full text is on screen where the label is drawn
            for label in scr.query(".number-label, .field-label"):
                if visible(app, label):
                    assert str(label.content) in flat, (mode, str(label.content))
            # a select's value is never split across rows
            for sel in scr.query(Select):
                if visible(app, sel) and isinstance(sel.value, str):
                    assert sel.value in text, (mode, sel.value)
            for box in scr.query(Checkbox):
                if visible(app, box):
                    assert (ON if box.value else OFF) + "▌ " + str(box.label) in text
            # F7 and F8: the table never wider than the screen (low-value columns go first)
            for table in scr.query(DataTable) if mode in ("sessions", "models") else []:
                if table.columns and visible(app, table):
                    width = sum(c.get_render_width(table) for c in table.columns.values())
                    assert width <= size[0], (mode, width)
            # the footer: never cut at 140 columns (every entry whole)
            if size[0] >= 140:
                footer = scr.query_one(Footer)
                shown = [k for k in footer.query("FooterKey")]
                assert shown and all(visible(app, k) for k in shown), mode
            if mode == "chat":
                msgs = scr.query_one("#messages")
                assert msgs.region.height >= (8 if size[1] <= 24 else 20), msgs.region


async def test_chat_transcript_keeps_rows_at_80x24(make_app):
    """After an answer (the token explorer filled) the transcript still shows rows of text."""
    eng = FakeEngine(tokens=tuple(f"w{i} " for i in range(60)), token_delay=0.0)
    app = make_app(engine=eng)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        box = app.screen.query_one("#prompt")
        box.focus()
        box.value = "hello there"
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and "w59" in "\n".join(screen_text(app)))
        msgs = app.screen.query_one("#messages")
        assert msgs.region.height >= 8
        assert "hello there" in "\n".join(screen_text(app))


async def test_check_glyphs_differ(make_app):
    """Checked and unchecked boxes draw different glyphs (not only a colour)."""
    app = make_app()
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await open_screen(pilot, app, "f4", "search")
        box = app.screen.query_one("#ts-allow-plugin", Checkbox)
        assert f"▐{OFF}▌ allow plugin" in "\n".join(screen_text(app))
        box.value = True
        await pilot.pause()
        assert f"▐{ON}▌ allow plugin" in "\n".join(screen_text(app))
        await open_screen(pilot, app, "f5", "dashboard")
        text = "\n".join(screen_text(app))
        assert f"▐{ON}▌ baseline" in text and f"▐{OFF}▌ kv-reuse" in text


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_context_warning_is_whole_beside_the_memory_gauge(make_app, size):
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        app.settings.sampling.max_new_tokens = 2000  # of the fake model's 2,048
        app.screen.query_one("#prompt").value = "x" * 400  # ≈ 100 tokens typed: cannot fit
        meter = app.screen.query_one("#context-meter")
        gauge = app.screen.query_one("#memory-gauge")
        await until(pilot, lambda: "cannot fit the context at all" in str(meter.render()))
        await pilot.pause()
        # the warning wraps inside its own column (every character drawn) with a gap before RSS
        assert meter.region.height * meter.region.width >= len(str(meter.render()))
        assert gauge.region.x >= meter.region.right + 1
        assert "allRSS" not in "\n".join(screen_text(app))
