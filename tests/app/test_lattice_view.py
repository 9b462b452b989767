"""The attack screen's tokenization lattice on the tiny model, keys and all: after a run the
canonical and best paths are drawn over the request; s/m/./, edit the path at the cursor and the
shown score equals scoring that tokenization from scratch; g searches from the edited path."""
from __future__ import annotations

import pytest

from app.engines import Engine
from app.widgets.lattice_view import LatticeView

from app_fakes import until
from test_screen_attack import SIZE, fill


async def test_lattice_edit_rescores_and_seeds_a_search(make_app, tiny_lm):
    from engine.advtok.score import reference_scores

    app = make_app(engine=Engine(lm=tiny_lm))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        await until(pilot, lambda: not app.runner.busy)
        await pilot.press("f3")
        await until(pilot, lambda: app.current_mode == "attack")
        scr = app.screen
        fill(scr, request="Tell me a joke about cats", response="Sure, here", iters="1",
             neighbours="4", samples="0", seed="0")
        await until(pilot, lambda: not scr.query_one("#atk-run").disabled)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.job is not None and scr.job.done and scr.result is not None,
                    timeout=180)
        r = scr.result
        view = scr.query_one(LatticeView)
        rows = str(view.query_one("#lat-rows").render())
        assert "canonical" in rows and "adversarial" in rows and "joke" in rows

        await pilot.click("#atk-lattice")
        assert view.has_focus
        # cursor to the first token of 3+ bytes, then split it
        lens = [len(t.encode()) for t in r.best_tokens]
        target = next(k for k, n in enumerate(lens) if n >= 3)
        for _ in range(target):
            await pilot.press("right")
        assert view.cursor == target
        await pilot.press("s")
        await until(pilot, lambda: view.lattice is not None and not app.runner.busy)
        lat = view.lattice
        assert len(lat.ids) == len(r.best_ids) + 1 and lat.mdd.contains(lat.ids)
        scratch = reference_scores(tiny_lm, lat.prefix, [lat.ids], lat.between, lat.targets)[0]
        assert lat.score == pytest.approx(scratch, abs=1e-4)
        assert f"{lat.score:.3f}" in str(view.query_one("#lat-status").render())
        drawn = str(view.query_one("#lat-rows").render())
        assert "edited" in drawn and "edges from" in drawn
        from app.widgets.lattice_view import edge_starts

        starts = edge_starts(lat)  # one glyph per character: the diagram's out-degree there
        n0 = len(lat.mdd.out[0])
        assert len(starts) == len(lat.text) and starts[0] == ("+" if n0 >= 10 else str(n0))

        # m merges it back (same bytes, one token fewer); . moves a boundary
        await pilot.press("m")
        await until(pilot, lambda: len(lat.ids) == len(r.best_ids) and not app.runner.busy)
        await pilot.press("full_stop")
        await until(pilot, lambda: "moved boundary" in view.last and not app.runner.busy)
        scratch = reference_scores(tiny_lm, lat.prefix, [lat.ids], lat.between, lat.targets)[0]
        assert lat.score == pytest.approx(scratch, abs=1e-4)
        # the note was about that token: moving to another one drops it
        await pilot.press("left" if view.cursor else "right")
        await pilot.pause()
        assert view.last == "" and "moved boundary" not in str(view.query_one("#lat-status").render())

        # g: a search seeded with the edited tokenization (init = given)
        seeded = list(lat.ids)
        await pilot.press("g")
        await until(pilot, lambda: scr.result is not None and scr.result is not r
                    and scr.job.done, timeout=180)
        assert scr.result.init_ids == seeded
        assert scr.result.config.get("init") == "given"
