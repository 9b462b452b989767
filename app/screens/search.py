"""Tree-search screen: MaxEnt tree search over tokens toward a reward, through the runner (job kind
"tree", timeout from settings).

The reward spec is parsed as it is typed (engine.treesearch.rewards, torch-free): a spec that does not parse
shows its message inline and keeps Run disabled, as does any other bad field. Plugin rewards run
the user's own Python code, so they need the explicit "allow plugin" checkbox; a warning says so
and the plugin module is imported only when the run starts (in the worker). While the search runs,
the live figures (rollouts, tree size, depth, best reward, tok/s) and a table of the root's
children (token, visits, value) update at most 4 times a second. The result shows the best answer
next to the plain greedy answer (temperature 0, same horizon) with both rewards; sample mode lists
the Boltzmann-descent samples. Esc stops (the best so far is kept); ctrl+e exports JSON.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from app.inert import notice, printable, tesc
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Collapsible, DataTable, Input, Label, Select, Static

from engine.errors import InputError
from engine.lm.config import ChatConfig
from engine.treesearch.config import MODES, TreeConfig

from app.messages import JobCancelled, JobProgressed
from app.screens.job_screen import JobScreen, Launch
from app.screens.search_form import PLUGIN_WARNING, fmt_reward, live_figures, parse_reward_spec
from app.validate import FieldCheck, first_error, parse_field
from app.widgets.engine_status import EngineStatus
from app.widgets.checks import Check
from app.widgets.tree_nav import TreeNavigator

ENGINE_MODULES = ("engine.treesearch.search",)
JOB_KIND = "tree"
WHAT = "Tree search over tokens with a reward spec (rollouts, horizon, λ; root children, best vs greedy answer)"

LIVE_HZ = 4.0

class SearchScreen(JobScreen):
    """Tree search: form, live tree figures and root children, best vs greedy, export."""

    JOB_KIND, PREFIX, NOUN, PALETTE, EXPORT_STEM = JOB_KIND, "ts", "tree search", "search", "treesearch"
    ENGINE_MODULES, ENGINE_METHOD = ENGINE_MODULES, "tree_search"
    ENGINE_MISSING = ("the tree-search engine (engine.treesearch.search) is not available in this "
                      "checkout")

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="search.stop", tooltip="Stop the running tree search"),
        Binding("ctrl+r", "run", "Run", id="search.run", tooltip="Run the tree search"),
        Binding("ctrl+e", "export", "Export JSON", id="search.export", priority=True,
                tooltip="Export the last result as JSON"),
    ]

    def __init__(self) -> None:
        super().__init__(id="search-screen")  # self.result: engine.treesearch TreeRun
        self._live: Optional[Any] = None     # newest tree Progress not drawn yet
        self.table_updates = 0
        self._last_draw = 0.0
        self.table_times: list[float] = []

    # -- layout -------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        p = self.parsers()
        with VerticalScroll(id="search-main", classes="tool-main"):
            with Horizontal(classes="form-row"):
                yield Label("Prompt", classes="field-label")
                yield Input(id="ts-prompt", placeholder="e.g. Write one sentence about the night sky",
                            validators=[FieldCheck(p["ts-prompt"])])
            with Horizontal(classes="form-row"):
                yield Label("Reward spec", classes="field-label")
                yield Input(id="ts-reward", value="words:moon,stars",
                            placeholder="words:a,b · regex:P · answer:X · length:20-40 · "
                                        "loglik:TEXT · plugin:module:function")
            with Horizontal(id="ts-numbers", classes="form-row number-row"):
                # short labels (whole at 80 columns); the tooltip says the rest
                for ident, label, value, ph, tip in (
                        ("ts-rollouts", "rollouts", "10", "≥ 1", "rollouts in the whole search"),
                        ("ts-horizon", "horizon", "32", "≥ 1", "new tokens per rollout at most"),
                        ("ts-lambda", "λ", "1.0", "> 0",
                         "λ: rewards count as exp(λ·r); larger favours reward over diversity"),
                        ("ts-seed", "seed", "0", "empty: random", "seed of the search"),
                        ("ts-samples", "samples", "3", "≥ 1",
                         "answers drawn from the tree (sample mode)"),
                        ("ts-rep", "rep. penalty", "1.0", "1 = off", "repetition penalty (1 = off)"),
                ):
                    with Vertical(classes="number-field"):
                        yield Label(label, classes="number-label").with_tooltip(tip)
                        yield Input(value=value, id=ident, placeholder=ph, tooltip=tip,
                                    validators=[FieldCheck(p[ident])])
                with Vertical(classes="number-field"):
                    yield Label("mode", classes="number-label").with_tooltip(
                        "search: the best reward; sample: draw answers from the tree")
                    yield Select([(m, m) for m in MODES], value="search", allow_blank=False,
                                 id="ts-mode")
            yield Static("", id="ts-error", classes="inline-error")
            yield Static("", id="ts-plugin-warning", classes="warning-line")
            with Horizontal(classes="button-row"):
                yield Button("Run search", id="ts-run", variant="primary", disabled=True)
                yield Button("Stop", id="ts-stop", variant="error", disabled=True)
                yield Button("Export JSON", id="ts-export", disabled=True)
                yield Check("allow plugin", False, id="ts-allow-plugin",
                            tooltip="a plugin: reward runs your own Python code; allow it")
            yield Static("", id="ts-status", classes="status-line")
            yield Static("[dim]live tree figures appear here while a search runs[/]",
                         id="ts-live", classes="status-line")
            yield DataTable(id="ts-children", cursor_type="row", zebra_stripes=True)
            yield TreeNavigator(id="ts-tree")
            with Vertical(id="ts-result"):
                yield Static("[dim]no result yet — type a prompt and a reward, then Run "
                             "(ctrl+r)[/]", id="ts-summary")
                with Horizontal(id="ts-answers"):
                    with Vertical(classes="sample-col"):
                        yield Static("[b]tree search[/]", id="ts-best-title", classes="strip-title")
                        yield Static("", id="ts-best", classes="sample-body")
                    with Vertical(classes="sample-col"):
                        yield Static("[b]greedy[/]", id="ts-greedy-title", classes="strip-title")
                        yield Static("", id="ts-greedy", classes="sample-body")
            with Collapsible(title="engine status", collapsed=True, id="ts-engine"):
                yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="search-status")

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#ts-children", DataTable)
        table.add_columns("root child token", "id", "visits", "draws", "value v̂")
        self.set_interval(0.05, self._draw_live)  # draws are spaced by LIVE_HZ in _draw_live
        self.query_one("#ts-prompt", Input).focus()
        self.refresh_controls()

    # -- validation ---------------------------------------------------------------------------
    def parsers(self) -> dict[str, Callable[[str], Any]]:
        return {
            "ts-prompt": lambda v: parse_field(v, ChatConfig, "prompt"),
            "ts-rollouts": lambda v: parse_field(v, TreeConfig, "rollouts"),
            "ts-horizon": lambda v: parse_field(v, TreeConfig, "horizon",
                                                hi=max(1, self.context_length() - 1)),
            "ts-lambda": lambda v: parse_field(v, TreeConfig, "lam"),
            "ts-seed": lambda v: parse_field(v, TreeConfig, "seed"),
            "ts-samples": lambda v: parse_field(v, TreeConfig, "n_samples"),
            "ts-rep": lambda v: parse_field(v, TreeConfig, "repetition_penalty"),
        }

    def allow_plugin(self) -> bool:
        return bool(self.query_one("#ts-allow-plugin", Checkbox).value)

    def form(self) -> tuple[dict[str, Any], Optional[str]]:
        """({prompt, reward_spec, cfg: TreeConfig fields}, first error or None)."""
        p = self.parsers()

        def val(ident: str) -> Callable[[], Any]:
            return lambda: p[ident](self.query_one(f"#{ident}", Input).value)

        spec = self.query_one("#ts-reward", Input).value
        values, err = first_error({
            "prompt": val("ts-prompt"),
            "reward": lambda: parse_reward_spec(spec, self.allow_plugin()),
            "rollouts": val("ts-rollouts"), "horizon": val("ts-horizon"),
            "lam": val("ts-lambda"), "seed": val("ts-seed"), "n_samples": val("ts-samples"),
            "repetition_penalty": val("ts-rep"),
            "mode": lambda: parse_field(str(self.query_one("#ts-mode", Select).value),
                                        TreeConfig, "mode"),
        })
        if err:
            return {}, err
        cfg = {k: values[k] for k in ("rollouts", "horizon", "lam", "seed", "mode", "n_samples",
                                      "repetition_penalty")}
        return {"prompt": values["prompt"], "reward_spec": spec.strip(), "cfg": cfg}, None

    # -- state → controls ---------------------------------------------------------------------
    def status_detail(self) -> str:
        app = self.tokenforge_app
        system = app.settings.system_prompt
        return (f"{tesc(app.lm.describe() if app.lm is not None else '')} · chat template with "
                f"the Settings system prompt"
                f"{' (' + tesc(system[:40]) + ')' if system else ' (none)'}")

    def refresh_form(self) -> None:
        spec = self.query_one("#ts-reward", Input).value.strip().lower()
        warn = self.allow_plugin() or spec.startswith("plugin")
        self.query_one("#ts-plugin-warning", Static).update(PLUGIN_WARNING if warn else "")
        try:  # the reward field is marked on its own, whatever the first error is
            parse_reward_spec(self.query_one("#ts-reward", Input).value, self.allow_plugin())
            bad_reward = False
        except InputError:
            bad_reward = True
        self.query_one("#ts-reward", Input).set_class(bad_reward, "-invalid")

    # -- run --------------------------------------------------------------------------------
    def prepare(self, f: dict[str, Any]) -> Launch:
        app = self.tokenforge_app
        self._live = None
        self.query_one("#ts-children", DataTable).clear()
        self.query_one("#ts-best", Static).update("")
        self.query_one("#ts-greedy", Static).update("")
        system = app.settings.system_prompt or None
        from app.settings import over_timeout

        c = f["cfg"]  # rollouts of up to `horizon` tokens, then the greedy answer
        late = over_timeout("this tree search", (c["rollouts"] + 1) * c["horizon"],
                            app.settings.measured_tok_s, app.runner.timeout_for(JOB_KIND))
        if late:
            notice(self, late, severity="warning", timeout=10)
        params = dict(f["cfg"], reward=f["reward_spec"], prompt_chars=len(f["prompt"]))
        settings = {"prompt": f["prompt"], "system": system, "reward": f["reward_spec"],
                    "allow_plugin": self.allow_plugin(), **f["cfg"]}
        return Launch(app.engine.tree_search,
                      (app.lm, f["prompt"], system, f["reward_spec"], self.allow_plugin(), f["cfg"]),
                      params=params, settings=settings,
                      running="[cyan]running…[/] tree search, then the greedy answer · Esc stops "
                              "and keeps the best so far")

    def cancelled_text(self, m: JobCancelled) -> str:
        r = m.partial.result
        return (f"stopped ({m.reason}) — {r.rollouts_done} finished rollout(s) kept, best found "
                f"so far" + (f"; {len(r.partial)} unfinished shown below the best" if r.partial else ""))

    def nothing_kept_text(self, m: JobCancelled) -> str:
        return f"stopped ({m.reason}) before any rollout finished"

    # -- live view (≤ 4 Hz) -------------------------------------------------------------------
    def on_job_progressed(self, m: JobProgressed) -> None:
        # ToolScreen's handler runs after this one (Textual walks the MRO) and feeds the widget
        if self._mine(m) and m.progress.phase == "tree":
            self._live = m.progress

    def _draw_live(self) -> None:
        """Draw the newest tree report, at most LIVE_HZ times a second (timers jitter under
        load, so the spacing is enforced here, not trusted to the interval)."""
        if self._live is None or not self.is_mounted:
            return
        if time.monotonic() - self._last_draw < 1.0 / LIVE_HZ:
            return
        p, self._live = self._live, None
        self.query_one("#ts-live", Static).update(live_figures(p.metrics, p.step, p.total))
        rows = [(c[0], None, c[1], None, c[2]) for c in p.metrics.get("root_children") or []]
        self._fill_table(rows)
        # spaced from the END of this draw: a slow draw must not shorten the gap to the next
        self._last_draw = time.monotonic()

    def _fill_table(self, rows: list[tuple]) -> None:
        table = self.query_one("#ts-children", DataTable)
        table.clear()
        for tok, tid, visits, draws, value in rows:
            table.add_row(Text(repr(str(tok))[1:-1] or "∅"), "" if tid is None else str(tid),
                          str(visits), "" if draws is None else str(draws),
                          "–" if value is None else f"{value:.4f}")
        self.table_updates += 1
        self.table_times.append(time.monotonic())

    def show_result(self, run: Any, note: str = "") -> None:
        self._live = None
        self.query_one("#ts-tree", TreeNavigator).show_run(run)
        r = run.result
        lines = []
        if note:
            lines.append(f"[yellow]{tesc(note)}[/]")
        if r.stop_reason == "reward_error":
            lines.append(f"[red]the reward failed: {tesc(r.error)}[/] — partial result below")
        lines.append(
            f"[b]stop[/] {tesc(r.stop_reason)} · {r.rollouts_done}/{r.rollouts_total} rollouts · "
            f"tree size {r.nodes} · depth {r.max_depth} · branching {r.mean_branching:.2f} · "
            f"root v̂ {r.root_value:.4f} · {r.generated_tokens} tokens at {r.tok_s:.1f} tok/s · "
            f"{r.total_s:.1f} s · forward {tesc(str(r.forward))}")
        c = r.config or {}
        if c:
            lines.append(f"[b]policy q[/] temperature {c.get('temperature', '?')} · top-p "
                         f"{c.get('top_p', '?')} · λ {c.get('lam', '?')} · widening "
                         f"{c.get('widening', '?')} · batch {c.get('batch', '?')} · seed "
                         f"{c.get('seed')}")
        lines.append(f"[b]reward[/] {tesc(str(r.reward.get('description', run.reward_spec)))}")
        self.query_one("#ts-summary", Static).update("\n".join(lines))
        self._fill_table([(c.get("token"), c.get("id"), c.get("visits"), c.get("draws"),
                           c.get("value")) for c in r.root_children])
        self.query_one("#ts-live", Static).update(live_figures(
            {"nodes": r.nodes, "depth": r.max_depth, "best_reward": r.best_reward,
             "tok_s": r.tok_s, "root_value": round(r.root_value, 4)},
            r.rollouts_done, r.rollouts_total))
        best = Text()
        if r.mode == "sample" and r.samples:
            self.query_one("#ts-best-title", Static).update(
                f"[b]tree samples[/] (Boltzmann descent, {len(r.samples)}) · best seen reward "
                f"{fmt_reward(r.best_reward)}")
            for i, s in enumerate(r.samples, 1):
                if i > 1:
                    best.append("\n\n")
                best.append(f"{i}. ", style="bold")
                best.append(printable(s.text.strip(), multiline=True) or "(empty)")
                best.append(f"  [reward {s.reward:.3f}]", style="dim")
        else:
            self.query_one("#ts-best-title", Static).update(
                f"[b]tree search best[/] · reward [b]{fmt_reward(r.best_reward)}[/]"
                + (" · [yellow]stopped[/]" if r.stop_reason == "cancelled" else ""))
            best.append(printable(r.best_text.strip(), multiline=True) or "(no rollout finished)")
        for i, text in enumerate(getattr(r, "partial", None) or [], 1):
            best.append(f"\n\nunfinished {i} (stopped, not scored): ", style="yellow")
            best.append(printable(text.strip(), multiline=True) or "(empty)")
        self.query_one("#ts-best", Static).update(best)
        if run.greedy_text is None:
            self.query_one("#ts-greedy-title", Static).update("[b]greedy[/] · not run")
            self.query_one("#ts-greedy", Static).update(Text(
                "skipped: the search did not complete", style="dim"))
        else:
            extra = f" [red]({tesc(run.greedy_error)})[/]" if run.greedy_error else ""
            self.query_one("#ts-greedy-title", Static).update(
                f"[b]greedy[/] (temperature 0, same horizon) · reward "
                f"[b]{fmt_reward(run.greedy_reward)}[/]{extra}")
            self.query_one("#ts-greedy", Static).update(
                Text(printable(run.greedy_text.strip(), multiline=True) or "(empty)"))
