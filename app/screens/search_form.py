"""The tree-search form's parsing and the live figures line, kept apart from the screen: the
reward spec (plugin specs checked for shape only; importing runs user code, so that waits for
Run) and one progress report as Rich markup."""
from __future__ import annotations

import re
from typing import Any, Optional

from app.inert import tesc

from engine.errors import InputError

PLUGIN_WARNING = ("⚠ plugin rewards import and run YOUR OWN Python code inside tokenforge; "
                  "tick 'allow plugin' only for code you trust")
_MODULE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_FUNC = re.compile(r"^[A-Za-z_]\w*$")


def parse_reward_spec(text: str, allow_plugin: bool) -> Any:
    """The reward object for ``text`` (InputError with one clear message otherwise).

    Plugin specs are checked for shape only (``plugin:module:function``) and need
    ``allow_plugin``: importing the module runs the user's code, which happens when the run
    starts, not on every keystroke."""
    from engine.treesearch.rewards import parse_reward  # torch-free

    spec = (text or "").strip()
    kind = spec.partition(":")[0].strip().lower()
    if kind == "plugin":
        if not allow_plugin:
            raise InputError("plugin rewards run your own Python code: tick 'allow plugin' to "
                             "enable them")
        mod, sep, fn = spec.partition(":")[2].strip().rpartition(":")
        if not sep or not _MODULE.match(mod) or not _FUNC.match(fn):
            raise InputError(f"plugin: expects plugin:module:function (got {spec!r})")
        return None
    try:
        return parse_reward(spec, allow_plugin=False)
    except InputError as e:
        hint = getattr(e, "hint", "")
        raise InputError(f"{e}" + (f" — {hint}" if hint else "")) from None


def fmt_reward(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def live_figures(m: dict[str, Any], step: int, total: Optional[int]) -> str:
    """Rich markup for the live tree figures of one progress report."""
    parts = [f"rollouts [b]{step}/{total or '?'}[/]",
             f"tree size [b]{m.get('nodes', m.get('tree_size', '–'))}[/]",
             f"depth [b]{m.get('depth', '–')}[/]",
             f"best reward [b]{fmt_reward(m.get('best_reward'))}[/]",
             f"[b]{m.get('tok_s', 0.0):.1f}[/] tok/s",
             f"root v̂ {m.get('root_value', '–')}"]
    out = " · ".join(parts)
    best = m.get("best_text")
    if best:
        out += f"\n[dim]best so far:[/] {tesc(str(best).strip()[-200:])}"
    return out
