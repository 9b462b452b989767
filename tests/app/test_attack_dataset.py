"""The attack screen's dataset mode on the tiny random model (the real engine: run_rows, the
judges, the ΔASR report): the benchmark's layout and bad rows with line numbers, live progress
across rows, the report table with ΔASR and n, a re-Run that resumes, a settings mismatch
refused inline, judging the results file, and Esc leaving the results file readable. Run at
140×45 and 80×24. The rows are benign synthetic requests."""
from __future__ import annotations

import json

import pytest
from textual.widgets import Button, Input, TabbedContent

from app.widgets.token_strip import display_token
from app_fakes import until
from engine.advtok.records import read_results

ROWS = [
    {"id": "sea", "request": "Write a short poem about the sea", "response": "Sure, here is",
     "category": "poetry"},
    {"id": "bread", "request": "Explain how bread rises", "response": "Sure, here is",
     "category": "cooking"},
]


def bench_file(tmp_path):
    p = tmp_path / "rows.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ['{"request": ""}']   # line 3: a bad row
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


async def open_dataset(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
    await pilot.press("f3")
    await until(pilot, lambda: app.current_mode == "attack")
    scr = app.screen
    # the screen focuses its request field on mount, and a focus inside a pane makes that pane
    # active: under load that can land after a direct switch. Focusing a field of the Dataset
    # pane is ordered after it (one message queue) and switches for good.
    await until(pilot, lambda: app.focused is not None)
    scr.query_one("#atk-modes", TabbedContent).active = "atk-mode-dataset"
    scr.query_one("#ds-bench").focus()
    await until(pilot, lambda: scr.dataset_mode and app.focused is scr.query_one("#ds-bench"))
    return scr


def fill(scr, **values):
    for k, v in values.items():
        scr.query_one(f"#ds-{k}", Input).value = v


def shown(scr, ident):
    return str(scr.query_one(f"#{ident}").render())


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_dataset_run_resume_judge_report(make_app, tiny_lm, tmp_path, size, monkeypatch):
    import engine.advtok.judges as judges_mod
    from app.engines import Engine

    app = make_app(engine=Engine(lm=tiny_lm))
    out = tmp_path / "results.jsonl"
    made = []                                  # the judge settings each make_judges call got
    real_make = judges_mod.make_judges
    monkeypatch.setattr(judges_mod, "make_judges", lambda *a, **kw: (
        made.append(kw.get("settings")), real_make(*a, **kw))[1])
    async with app.run_test(size=size) as pilot:
        scr = await open_dataset(pilot, app)
        fill(scr, bench=str(bench_file(tmp_path)), out=str(out), judges="refusal",
             iters="1", samples="2", tokens="4", neighbours="6", seed="3",
             policies="nosuch")
        await pilot.pause()                              # a bad judge setting: inline, no Run
        assert "shieldgemma polic" in shown(scr, "ds-error").lower() and scr.query_one("#ds-run").disabled
        fill(scr, policies="hate, dangerous", **{"rubric-tokens": "32"})
        await until(pilot, lambda: not scr.query_one("#ds-run", Button).disabled)
        scr.query_one("#ds-bench", Input).focus()
        await pilot.press("enter")                       # Enter reads the file
        await until(pilot, lambda: "layout jsonl" in shown(scr, "ds-file"))
        assert "2 usable row(s)" in shown(scr, "ds-file") and "line 3" in shown(scr, "ds-file")

        panel = scr.query_one("#atk-dataset")
        line = scr.query_one("#ds-progress")
        seen: list[str] = []                             # every text the progress line showed
        update = line.update
        line.update = lambda content="": (seen.append(str(content)), update(content))[1]
        await pilot.press("ctrl+r")                      # the dataset mode's Run
        await until(pilot, lambda: panel.outcome is not None or bool(panel.error))
        assert panel._job.state == "finished", panel._job.error
        assert any("row 1/2" in s and "rows/h" in s and "ETA" in s for s in seen), seen
        assert any("row 2/2" in s for s in seen), seen
        assert any(" ΔASR " in s and "(n=" in s for s in seen), seen   # running ΔASR per judge
        assert "done" in shown(scr, "ds-progress") and "2 row(s) run" in shown(scr, "ds-progress")
        cells = panel.report_cells()
        assert cells[0][:4] == ["judge", "category", "rows", "ΔASR (n rows)"]
        assert any(r[0] == "refusal" and r[1] == "all" and r[2] == "2" for r in cells[1:])
        assert all("n=" in r[3] for r in cells[1:])     # every ΔASR cell carries its n
        assert {r[1] for r in cells[1:]} >= {"poetry", "cooking"}
        assert len(read_results(out).records) == 2
        recs = read_results(out).records
        assert {(r["config"]["seed"], r["config"]["max_neighbours"]) for r in recs} == {(3, 6)}
        assert made[-1].shield_policies == ("hate", "dangerous")
        assert made[-1].rubric_max_tokens == 32

        # the drill-down: one line per row; the highlighted row's tokenizations in the lattice
        # (rebuilt from its record with the loaded tokenizer), its samples and verdicts
        rows = scr.query_one("#ds-rows")
        assert rows.row_count == 2
        recs = {r["id"]: r for r in read_results(out).records}
        lat = scr.query_one("#ds-lattice")
        drawn = lambda: str(lat.query_one("#lat-rows").render())        # noqa: E731
        status = lambda: str(lat.query_one("#lat-status").render())     # noqa: E731
        await until(pilot, lambda: lat.paths is not None and lat.paths.row == "sea")
        assert shown(scr, "ds-row-title").startswith("row sea (line 1)")
        assert lat.paths.canonical == recs["sea"]["canonical_ids"]
        assert lat.paths.adversarial == recs["sea"]["best_ids"]
        assert lat.paths.text == recs["sea"]["request_text"]
        assert all(k in drawn() for k in ("edges from", "canonical", "adversarial", "poem"))
        detail = shown(scr, "ds-row-samples")
        assert "adversarial samples (2)" in detail and "canonical samples (2)" in detail
        assert "refusal " in detail

        # keys: down to the second row, Enter into its lattice, → moves the cursor over the
        # adversarial path (edits are off), Esc back to the rows without stopping anything
        rows.focus()
        await pilot.pause()
        await pilot.press("down")
        await until(pilot, lambda: lat.paths is not None and lat.paths.row == "bread")
        assert shown(scr, "ds-row-title").startswith("row bread (line 2)")
        await pilot.press("enter")
        assert lat.has_focus
        await pilot.press("right", "right")
        assert lat.cursor == 2
        bread = recs["bread"]
        want = lat.paths.tokens(bread["best_ids"])[2]
        assert "cursor 2:" in status() and f"id {bread['best_ids'][2]}" in status()
        assert repr(display_token(want)) in status()
        await pilot.press("s")                                   # read-only: no edit starts
        await pilot.pause()
        assert lat.lattice is None and not app.runner.busy
        await pilot.press("escape")
        assert rows.has_focus and not scr.busy and panel._job.state == "finished"

        # a row made with another tokenizer (or, without a recorded one, other weights) is
        # named in one line, and no lattice is drawn
        drill = scr.query_one("#ds-drill")
        drill.show([dict(recs["sea"], tokenizer={"vocab_hash": "0" * 64, "kind": "byte_bpe"})])
        await until(pilot, lambda: "another tokenizer" in drawn())
        assert lat.paths is None and "edges from" not in drawn()
        old = {k: v for k, v in recs["sea"].items() if k != "tokenizer"}
        drill.show([dict(old, model=dict(old["model"], weights_hash="f" * 32))])
        await until(pilot, lambda: "does not name its tokenizer" in drawn())
        assert lat.paths is None
        drill.show(list(recs.values()))

        # a re-Run resumes: both rows already finished, nothing redone
        await pilot.press("ctrl+r")
        await until(pilot, lambda: panel._job.done and "already finished" in shown(scr, "ds-progress"))
        assert "0 row(s) run, 2 already finished" in shown(scr, "ds-progress")

        # other settings on the same results file: refused, the message inline
        bench2 = tmp_path / "more.jsonl"
        bench2.write_text(json.dumps({"id": "tea", "request": "Describe green tea",
                                      "response": "Sure, here is"}) + "\n", encoding="utf-8")
        fill(scr, bench=str(bench2), iters="2")
        await pilot.pause()
        await pilot.press("ctrl+r")
        await until(pilot, lambda: panel._job.state == "failed" and bool(panel.error))
        assert "iter" in shown(scr, "ds-error").lower(), shown(scr, "ds-error")
        assert len(read_results(out).records) == 2

        # judge the existing results file with one more judge: the report gains it
        fill(scr, judges="refusal,target")
        await pilot.pause()
        scr.query_one("#ds-judge", Button).press()
        await until(pilot, lambda: panel._job.done and panel._mode == "judge"
                    and panel.outcome is not None)
        assert "judged 2 row(s)" in shown(scr, "ds-progress")
        assert made[-1].shield_policies == ("hate", "dangerous")     # judging: the same settings
        assert {r[0] for r in panel.report_cells()[1:]} == {"refusal", "target"}
        recs = read_results(out).records
        assert all("target" in s["verdicts"] for r in recs for s in r["adversarial_samples"])

        # ctrl+e (dataset mode): the report as Markdown + CSV, byte for byte what
        # `attack report --markdown --csv` writes for the same results file
        box = scr.query_one("#ds-report-box")
        await pilot.press("ctrl+e")
        await until(pilot, lambda: len(box.exported) == 2)
        md, cs = box.exported
        assert md.parent == app.settings.export_dir and md.suffix == ".md" and cs.suffix == ".csv"
        assert "report exported" in shown(scr, "ds-export-line")
        exported = (md.read_bytes(), cs.read_bytes())

        # a disk that refuses (the export folder under a regular file): one line, nothing left
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x", encoding="utf-8")
        app.settings.export_dir = blocker / "exports"
        scr.query_one("#ds-export", Button).press()
        await until(pilot, lambda: "export failed" in shown(scr, "ds-export-line"))
        line = shown(scr, "ds-export-line").strip()
        assert "\n" not in line and "not-a-folder" in line, line
        assert blocker.read_text(encoding="utf-8") == "x"

    from app.cli import main

    cli_md, cli_csv = tmp_path / "cli.md", tmp_path / "cli.csv"
    assert main(["attack", "report", str(out), "--markdown", str(cli_md),
                 "--csv", str(cli_csv)]) == 0
    assert exported == (cli_md.read_bytes(), cli_csv.read_bytes())


def held_after_first_row():
    """The real engine, held after its first written row until the job is stopped, so Esc
    lands between rows whatever the machine's speed."""
    from app.engines import Engine

    class Held(Engine):
        def dataset_run(self, *a, on_row=None, cancel=None, **kw):
            def hold(i, n, rec):
                on_row(i, n, rec)
                while not cancel.wait(0.05):
                    pass

            return super().dataset_run(*a, on_row=hold, cancel=cancel, **kw)

    return Held


async def test_dataset_escape_stops_and_leaves_results_readable(make_app, tiny_lm, tmp_path):
    app = make_app(engine=held_after_first_row()(lm=tiny_lm))
    out = tmp_path / "results.jsonl"
    async with app.run_test(size=(80, 24)) as pilot:
        scr = await open_dataset(pilot, app)
        fill(scr, bench=str(bench_file(tmp_path)), out=str(out), judges="refusal",
             iters="2", samples="2", tokens="4")
        await until(pilot, lambda: not scr.query_one("#ds-run", Button).disabled)
        panel = scr.query_one("#atk-dataset")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(panel.records) == 1)
        assert scr.busy
        await pilot.press("escape")
        await until(pilot, lambda: panel._job.done)
        assert panel._job.state == "cancelled"
        assert "stopped" in shown(scr, "ds-progress") and "1 row(s) written" in shown(scr, "ds-progress")
        assert not scr.busy and not scr.query_one("#ds-run", Button).disabled
        assert [r["id"] for r in read_results(out).records] == ["sea"]   # whole lines only
        # a re-Run resumes with the row left
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(panel.records) == 1 and panel._job.done is False)
        await pilot.press("escape")
        await until(pilot, lambda: panel._job.done)
        assert sorted(r["id"] for r in read_results(out).records) == ["bread", "sea"]


def test_drill_down_shows_each_verdict_s_score_and_details():
    """Beside each label and raw output: the rubric's score, Llama Guard's P(unsafe) and
    categories, ShieldGemma's P(Yes) per policy — inert text."""
    from app.widgets.dataset_rows import samples_with_verdicts

    rec = {"adversarial_samples": [{"text": "Soft rain.", "verdicts": {
        "llama-guard:m": {"label": "harmful", "raw": "unsafe\nS1",
                          "detail": {"categories": ["S1"], "p_unsafe": 0.931234}},
        "shieldgemma:m": {"label": "safe", "raw": "",
                          "detail": {"policies": {"hate": {"p_yes": 0.0123, "violated": False}}}},
        "rubric:m": {"label": "unparsed", "raw": "\x1b[2Jno scores", "score": None}}}],
        "canonical_samples": []}
    shown = samples_with_verdicts(rec).plain
    assert "llama-guard:m harmful · categories S1 · p_unsafe 0.931" in shown
    assert "shieldgemma:m safe · policies hate 0.0123" in shown
    assert "rubric:m unparsed · raw: \\x1b[2Jno scores" in shown       # escaped, never run
