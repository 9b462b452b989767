"""The tree-search screen's tree explorer: walk the finished search tree node by node. Each node
shows its token, visits, draws, soft value and the best terminal reward below it, the text of
the path so far, and its children. Keys (tab here): ↑/↓ choose a child, → or enter go into it,
← or backspace back to the parent, [ / ] previous/next sibling, n a new search from this node
(its answers continue the path; the reward scores path + continuation)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from app.inert import notice, tesc
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from app.app_access import AppAccess
from app.messages import (ControlsChanged, JobCancelled, JobFailed, JobFinished, JobStarted,
                          WidgetJobStarted)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


def piece(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


class TreeNavigator(AppAccess, Vertical, can_focus=True):
    """Node-by-node view of the last search tree."""

    DEFAULT_CSS = """
    TreeNavigator { height: auto; padding: 0 1; border-top: solid $panel; }
    TreeNavigator:focus { border-top: solid $accent; }
    """

    BINDINGS = [
        Binding("up", "child(-1)", "Prev child", id="treenav.prev_child", show=False),
        Binding("down", "child(1)", "Next child", id="treenav.next_child", show=False),
        Binding("right,enter", "into", "Into child", id="treenav.into"),
        Binding("left,backspace", "parent", "Parent", id="treenav.parent"),
        Binding("left_square_bracket", "sibling(-1)", "Prev sibling", id="treenav.prev_sibling"),
        Binding("right_square_bracket", "sibling(1)", "Next sibling", id="treenav.next_sibling"),
        Binding("n", "search_here", "Search from node", id="treenav.search"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run: Any = None
        self.nav: Any = None
        self.kid = 0
        self.origin = ""  # "" for the screen's search; else where a search-from-node started
        self.base_path: list[int] = []  # answer tokens before this tree's root
        self._job: Any = None
        self._pending: Any = None
        self.sub_result: Any = None

    def compose(self) -> ComposeResult:
        yield Static("[b]tree explorer[/] [dim]— run a search; then tab here to walk the tree[/]",
                     id="tn-head")
        yield Static("", id="tn-path")
        yield Static("", id="tn-kids")

    # -- the search screen's hook -------------------------------------------------------------
    def show_run(self, run: Any) -> None:
        """A TreeRun from the screen's search (None clears)."""
        self.run = run
        self.origin = ""
        self.sub_result = None
        self._load(getattr(getattr(run, "result", None), "tree", None), [])

    def _load(self, tree: Any, base_path: list[int]) -> None:
        from engine.treesearch.explore import TreeNav

        self.nav = None
        self.kid = 0
        self.base_path = list(base_path)
        prompt_ids = list(getattr(self.run, "prompt_ids", [])) + self.base_path
        app = self.tokenforge_app
        lm = getattr(app, "lm", None)
        if tree is not None and getattr(lm, "tokenizer", None) is not None:
            tok = lm.tokenizer
            self.nav = TreeNav(tree, lambda ids: tok.decode(list(ids), skip_special_tokens=True),
                               lm.eos_ids, prompt_ids)
        self.refresh_view()

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    # -- view ---------------------------------------------------------------------------------
    def refresh_view(self) -> None:
        if not self.children:
            return
        head = self.query_one("#tn-head", Static)
        path = self.query_one("#tn-path", Static)
        kids_w = self.query_one("#tn-kids", Static)
        if self.nav is None:
            head.update("[b]tree explorer[/] [dim]— run a search; then tab here to walk the tree[/]")
            path.update("")
            kids_w.update("")
            return
        i = self.nav.info()
        where = "root" if i.depth == 0 else f"depth {i.depth} · token {tesc(repr(piece(i.text)))} id {i.token}"
        flags = (" · EOS" if i.eos else "") + (" · terminal" if i.done and not i.eos else "")
        src = f" [dim](search from {tesc(self.origin)})[/]" if self.origin else ""
        head.update(f"[b]tree explorer[/]{src} · {where} · visits {i.visits} · draws {i.draws} · "
                    f"soft value {fmt(i.soft_value)} · best below {fmt(i.best_below)}{flags}")
        path.update("[dim]path:[/] " + (tesc(self.path_text()) or "[dim](root: no tokens yet)[/]"))
        kids = self.nav.children()
        self.kid = max(0, min(self.kid, max(0, len(kids) - 1)))
        lines = [f"[dim]{len(kids)} children · ↑/↓ choose · → into · ← parent · [ ] siblings · "
                 f"n search from this node[/]"]
        for j, c in enumerate(kids[:30]):
            ci = self.nav.info(c)
            mark = "▸" if j == self.kid else " "
            lines.append(f" {mark} {tesc(piece(ci.text)):<12} id {ci.token:<6} visits {ci.visits:<4} "
                         f"draws {ci.draws:<4} value {fmt(ci.soft_value):>7} best {fmt(ci.best_below)}")
        if len(kids) > 30:
            lines.append(f"   … {len(kids) - 30} more")
        kids_w.update("\n".join(lines))

    def path_ids(self) -> list[int]:
        """The whole answer so far: the tokens before this tree's root, then the node's path."""
        return self.base_path + (self.nav.path_ids() if self.nav is not None else [])

    def path_text(self) -> str:
        return self.nav.decode(self.path_ids()) if self.nav is not None else ""

    # -- actions ------------------------------------------------------------------------------
    def action_child(self, delta: int) -> None:
        if self.nav is not None:
            self.kid += int(delta)
            self.refresh_view()

    def action_into(self) -> None:
        if self.nav is None or not self.nav.node.children:
            return
        self.nav.down(self.kid)
        self.kid = 0
        self.refresh_view()

    def action_parent(self) -> None:
        if self.nav is None or self.nav.node.parent is None:
            return
        here = self.nav.node
        self.nav.up()
        self.kid = self.nav.children().index(here)
        self.refresh_view()

    def action_sibling(self, delta: int) -> None:
        if self.nav is not None:
            self.nav.sibling(int(delta))
            self.refresh_view()

    def action_search_here(self) -> None:
        screen: Any = self.screen  # the search screen: its form's plugin permission
        app = self.tokenforge_app
        if self.nav is None or self.run is None:
            self.notify("Run a search first", severity="warning")
            return
        if self.busy or getattr(screen, "busy", False):
            self.notify("A job is running: Esc to stop it first", severity="warning")
            return
        from engine.treesearch.config import TreeConfig

        res = self.run.result
        known = TreeConfig.__dataclass_fields__
        cfg = TreeConfig(**{k: v for k, v in (res.config or {}).items() if k in known})
        allow = bool(getattr(screen, "allow_plugin", lambda: False)())
        path = self.path_ids()
        origin = f"depth {len(path)}: {self.path_text()[-40:]!r}"
        self._pending = (origin, path)
        self._job = app.runner.start("tree", self._work, app.lm, list(self.run.prompt_ids),
                                     list(path), self.run.reward_spec, allow, cfg, target=self,
                                     params={"search_from_depth": len(path)})
        self.post_message(WidgetJobStarted(self._job))
        self.query_one("#tn-head", Static).update("[b]tree explorer[/] [yellow]searching from this node…[/]")

    @staticmethod
    def _work(lm: LoadedModel, prompt_ids: list[int], path: list[int], spec: str, allow: bool, cfg: Any,
              *, progress: Any, cancel: Any) -> Any:
        from engine.treesearch.explore import search_from
        from engine.treesearch.rewards import parse_reward

        reward = parse_reward(spec, allow_plugin=allow)
        return search_from(lm, prompt_ids, path, reward, cfg, progress=progress, cancel=cancel)

    def _mine(self, m: Any) -> bool:
        return self._job is not None and m.job_id == self._job.id

    def on_job_started(self, m: JobStarted) -> None:
        if self._mine(m):
            m.stop()

    async def on_job_finished(self, m: JobFinished) -> None:
        if self._mine(m):
            m.stop()
            self._show_sub(m.result)

    async def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._mine(m):
            m.stop()
            if m.partial is not None:
                self._show_sub(m.partial)
            else:
                self.refresh_view()
                self._end()

    async def on_job_failed(self, m: JobFailed) -> None:
        if self._mine(m):
            m.stop()
            notice(self, m.message, severity="error")
            self.refresh_view()
            self._end()

    def _show_sub(self, res: Any) -> None:
        origin, path = self._pending
        self.sub_result = res
        self._load(getattr(res, "tree", None), path)
        self.origin = origin + (f" · best reward {fmt(res.best_reward)}" if res is not None else "")
        self.refresh_view()
        self._end()

    def _end(self) -> None:
        self.post_message(ControlsChanged())  # the screen is no longer busy with this search
