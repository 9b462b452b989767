"""The tree-search screen's tree explorer on the tiny model, keys and all: walk into children,
siblings and back to the parent, the shown figures are the tree's own, and n starts a new search
from the current node."""
from __future__ import annotations

from app.engines import Engine
from app.widgets.tree_nav import TreeNavigator

from app_fakes import until
from test_screen_search import SIZE, fill


async def test_tree_navigation_and_search_from_a_node(make_app, tiny_lm):
    from engine.treesearch.explore import best_below, ordered_children

    app = make_app(engine=Engine(lm=tiny_lm))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        await until(pilot, lambda: not app.runner.busy)
        await pilot.press("f4")
        await until(pilot, lambda: app.current_mode == "search")
        scr = app.screen
        fill(scr, prompt="Say something", reward="length:3-12c", rollouts="8", horizon="6",
             seed="0")
        await until(pilot, lambda: not scr.query_one("#ts-run").disabled)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.job is not None and scr.job.done, timeout=180)
        tree = scr.result.result.tree
        nav = scr.query_one(TreeNavigator)
        await until(pilot, lambda: nav.nav is not None)
        assert nav.nav.node is tree.root
        head = str(nav.query_one("#tn-head").render())
        assert "root" in head and f"visits {tree.root.visits}" in head

        await pilot.click("#ts-tree")
        assert nav.has_focus
        kids = ordered_children(tree.root)
        await pilot.press("down")  # the second child, when there is one
        pick = kids[min(1, len(kids) - 1)]
        await pilot.press("right")
        assert nav.nav.node is pick
        head = str(nav.query_one("#tn-head").render())
        assert f"id {pick.token}" in head and f"visits {pick.visits}" in head
        want = best_below(pick)
        assert (f"best below {want:.3f}" if want is not None else "best below –") in head
        path = str(nav.query_one("#tn-path").render())
        assert tiny_lm.tokenizer.decode(nav.path_ids(), skip_special_tokens=True).strip() in path
        if len(kids) > 1:
            await pilot.press("left_square_bracket")
            assert nav.nav.node is kids[0]
            await pilot.press("right_square_bracket")
            assert nav.nav.node is pick
        await pilot.press("left")
        assert nav.nav.node is tree.root and nav.kid == kids.index(pick)

        # n: a new search from a depth-1 node; the explorer then walks the new tree
        await pilot.press("right")
        base = nav.path_ids()
        await pilot.press("n")
        await until(pilot, lambda: nav.sub_result is not None and not app.runner.busy, timeout=180)
        sub = nav.sub_result
        assert sub.stop_reason == "completed" and nav.nav.tree is sub.tree
        assert nav.base_path == base and "search from depth 1" in str(nav.query_one("#tn-head").render())
        assert nav.path_ids() == base
