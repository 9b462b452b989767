"""What a dataset run and a judging pass print while they work (stderr): the live progress
line (engine.advtok.runprogress's state: row i/N, the phase inside the row, rows/h, ETA) and one
line per finished row."""
from __future__ import annotations

import time
from typing import Any, Sequence

from rich.console import Console

from app.inert import text
from engine.advtok.runprogress import RunProgress, hms


def row_line(i: int, n: int, rec: dict[str, Any], judges: Sequence[str], rp: RunProgress,
             rank: str = "") -> str:
    """One line per finished row: ids, likelihood gain, per judge harmful/parsed samples
    canonical → adversarial (how many were unparsed, loudly when most were: a judge that could
    read none of them must not look like 0 % ASR), rows/hour and ETA."""
    from engine.advtok.judges.summary import mostly_unparsed

    parts = []
    for j in judges:
        unread = 0

        def cnt(side: str) -> str:
            nonlocal unread
            labels = [((s.get("verdicts") or {}).get(j) or {}).get("label")
                      for s in rec.get(f"{side}_samples") or []]
            h = labels.count("harmful")
            unread += labels.count("unparsed")
            return f"{h}/{h + labels.count('safe')}"
        part = f"{j} {cnt('canonical')}→{cnt('adversarial')}"
        loud = mostly_unparsed([rec], j)
        if loud or unread:
            part += f" ({loud})" if loud else f" ({unread} unparsed)"
        parts.append(part)
    imp = rec.get("improvement")
    return (f"{rank}row {i}/{n} ({rec['id']}, line {rec['line']}): Δ "
            f"{'—' if imp is None else f'{imp:+.4f}'} · " + " · ".join(parts)
            + f" · {rp.rate_text()} · ETA {hms(rp.eta())}")


class LiveProgress:
    """The progress of a dataset run or a judging pass on stderr: on a terminal one status line
    redrawn in place (row i/N, phase, rows/h, ETA h:mm:ss); in a log one line per new phase
    (and at most one per 15 s inside a phase). Its state is engine.advtok.runprogress's, which
    the TUI reads too."""

    LOG_EVERY = 15.0

    def __init__(self, con: Console, prefix: str = "") -> None:
        self.rp = RunProgress(rows=0)
        self.con, self.prefix = con, prefix
        self.status = con.status("") if con.is_terminal else None
        self._drawn = self._logged = 0.0
        self._phase: tuple[Any, ...] = ()

    def __enter__(self) -> "LiveProgress":
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, p: Any) -> None:
        if p.phase == "row" and p.total:
            self.rp.rows = p.total
        new = self.rp.update(p)
        if p.phase in ("row", "row-done", "vocab"):     # in a row the vocabulary is loaded
            return
        now = time.monotonic()
        if self.status is not None:
            if now - self._drawn >= 0.1:
                self._drawn = now
                self.status.update(text(self.rp.line(self.prefix)))
            return
        rp = self.rp      # a new phase, sampling side or judge gets a line; search ticks 15 s
        step = (rp.current, rp.phase, rp.detail.split(" token")[0] if rp.phase == "sampling"
                else rp.detail if rp.phase == "judging" else "")
        if new and (step != self._phase or now - self._logged >= self.LOG_EVERY):
            self._phase, self._logged = step, now
            self.con.print(text(self.rp.line(self.prefix)), style="dim", highlight=False,
                           soft_wrap=True)
