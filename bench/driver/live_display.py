"""A live display of a suite as it runs (``bench run``, ``bench replay``) on a terminal: campaigns
done of total, trials running, compute spent of the caps, elapsed and an estimate of the time
left, and each task's current incumbent. ``bench.driver.run_output.RunView`` shows it in place
of the plain progress lines when stderr is a terminal.

It is redrawn from the drivers' callbacks, at most every ``REDRAW_S``: a trial's callback
mostly costs a clock read, so a replay finishing thousands of trials a second is not slowed.
rich's own thread repaints the last drawing every 2 s (a paint costs about 2 ms), its summary
worked out anew (see ``_Summary``), so the clock and the trials running move while long trials
run."""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path

from bench.contract import schema as S
from bench.driver.suite import Suite

REDRAW_S = 0.5  # at most two drawings a second from the callbacks
DRAW_SHARE = 0.001  # and drawing from them takes at most this share of the time,
LONGEST_GAP_S = 5.0  # unless drawing is slow (the first imports rich): then every 5 s
TASK_ROWS = 8  # the tasks shown: the latest ones started (a suite may have dozens)


def terminal_console():
    """A rich console on stderr where stderr is a terminal that can redraw in place; None
    elsewhere (plain lines)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return None if console.is_dumb_terminal else console  # it could not redraw in place


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def amount(seconds: float) -> str:
    """Compute in its unit, to the second; a cap left at an "unlimited" 1e12 stays short."""
    return f"{seconds:,.0f}" if seconds < 1e7 else f"{seconds:.3g}"


def shorten(name: str, width: int) -> str:
    """``name`` in ``width`` characters, its end kept (tasks differ in their ends: -N100)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 3
    return name[:head] + "\N{HORIZONTAL ELLIPSIS}" + name[len(name) - (width - 1 - head):]


def done_in_journal(path: Path | None) -> set[int]:
    """The campaigns a resumed run's journal says are done: rebuilt from it, they get no
    done callback now."""
    from bench.contract.errors import BenchError
    from bench.contract.protocol import Event, event_kind
    from bench.records.journal import read_journal

    if path is None or not path.exists():
        return set()
    try:
        events, _ = read_journal(path)
    except BenchError:  # the driver has read it already; the display never stops a run
        return set()
    return {line["campaign"] for line in events if event_kind(line) == Event.DONE}


class _Summary:
    """Campaigns done, trials running, compute charged, elapsed and time left: worked out
    whenever rich paints (from its own thread too, so trials that start between callbacks
    show), from reads that are safe while the driver changes its campaigns (lengths, floats,
    a C-level copy of a dict's values). The time left is from the fraction of the suite done
    at the last drawing."""

    def __init__(self, display: "LiveDisplay") -> None:
        self.display = display

    def __rich__(self):
        from rich.text import Text

        shown = self.display
        active = list(shown.active.values())
        running = sum(len(c.requests) - len(c.done_ids) for c in active)
        spent = shown.done_spent + sum(c.spent_s for c in active)  # trials finished
        elapsed = (shown.ended or time.perf_counter()) - shown.started
        if shown.ended:  # at the last campaign's end, or at exit after a stop
            left = "finished" if len(shown.finished) == shown.total else "stopped"
        elif shown.fraction > 0:
            left = f"about {clock(elapsed * (1 - shown.fraction) / shown.fraction)} left"
        else:
            left = "time left unknown yet"
        return Text(f"{shown.title}: {len(shown.finished)}/{shown.total} campaigns done, "
                    f"{running} trials running\ncompute {amount(spent)}/"
                    f"{amount(shown.cap_total)} {shown.unit}\n"
                    f"elapsed {clock(elapsed)}, {left}")


class LiveDisplay:
    """What ``bench.driver.run_output.Progress`` does, drawn in place on a rich console.
    ``campaigns`` is the driver's list of campaigns started so far (appended to as they
    start; a resumed run's rebuilt ones are in it before any callback: those done are
    read from its ``journal``)."""

    def __init__(self, suite: Suite, campaigns: list, console,
                 journal: Path | None = None) -> None:
        from bench.driver.run_output import campaign_plans

        plans = campaign_plans(suite)
        self.total = len(plans)
        self.cap_total = sum(task.cap_s or suite.budget.cap_s for task, _, _ in plans)
        self.unit = suite.budget.unit_label
        self.title = f"{'replay' if suite.replay else 'run'} {suite.name}"
        self.campaigns, self.console, self.journal = campaigns, console, journal
        self.seen = 0  # campaigns[:seen] are sorted into done and active
        self.finished: set[int] = set()  # indices of the campaigns done
        self.done_spent = 0.0  # tuning compute of the done campaigns
        self.active: dict[int, object] = {}
        self.latest: dict[str, object] = {}  # task name -> its latest campaign started
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.fraction = 0.0  # of the suite done, at the last drawing
        self.drawn_at = -float("inf")
        self.draw_s = 0.0  # how long the last drawing took
        self.live = None

    def __getstate__(self) -> dict:
        """Ray Tune pickles its searcher, and through it the driver's callbacks: a copy
        has nothing to draw on (a terminal and rich's locks do not pickle)."""
        return self.__dict__ | {"console": None, "live": None, "ended": self.started}

    # -- the Progress interface, called by RunView and the drivers

    def campaign(self, campaign) -> None:
        self._changed(force=True)

    def record(self, campaign, row: dict) -> None:
        if row[S.STATUS] == S.FAILED:  # worth a line above the display, as in plain mode
            error = (row.get(S.ERROR) or "?")[:80]
            self.say(f"[{campaign.index + 1}/{self.total}] {campaign.task.name} | "
                     f"{campaign.label} | seed {campaign.seed}: {row[S.KIND]} failed ({error})")
        self._changed()

    def done(self, campaign) -> None:
        self._sort_in()
        self._finish(campaign)
        self._changed(force=True)

    def say(self, line: str) -> None:
        from rich.text import Text

        self.console.print(Text(line))  # above the display while it is shown

    def stop(self) -> None:
        """Draw the last state and leave it on the terminal (at the last campaign's end, or
        at exit for a driver that stopped early)."""
        if self.live is None or self.ended is not None:
            return
        self.ended = time.perf_counter()
        self._draw()
        self.live.stop()
        atexit.unregister(self.stop)

    # -- drawing

    def _changed(self, force: bool = False) -> None:
        """Draw if due: ``REDRAW_S`` after the last drawing (right away for a campaign's
        start or end), and not so often that drawing takes over ``DRAW_SHARE`` of the time
        (but at least every ``LONGEST_GAP_S`` while callbacks come)."""
        if self.ended is not None:
            return
        if self.live is None:
            self._start()
        if len(self.finished) == self.total:
            self.stop()
        elif time.perf_counter() - self.drawn_at >= min(LONGEST_GAP_S, max(
                0.0 if force else REDRAW_S, self.draw_s / DRAW_SHARE)):
            self._draw()

    def _start(self) -> None:
        from rich.live import Live

        resumed = done_in_journal(self.journal) if self.campaigns else set()
        self._sort_in()
        for campaign in self.campaigns:
            if campaign.index in resumed:
                self._finish(campaign)
        # what is printed meanwhile goes above the display (stdout too, on the same terminal)
        self.live = Live(console=self.console, auto_refresh=True, refresh_per_second=0.5,
                         redirect_stdout=sys.stdout.isatty())
        self._draw()
        self.live.start(refresh=True)
        atexit.register(self.stop)  # a driver that raised leaves the terminal as it was

    def _sort_in(self) -> None:
        """Campaigns started since the last look are active."""
        for campaign in self.campaigns[self.seen:]:
            self.latest[campaign.task.name] = campaign
            self.active[campaign.index] = campaign
        self.seen = len(self.campaigns)

    def _finish(self, campaign) -> None:
        if campaign.index not in self.finished:  # in this order for _Summary's reads
            self.active.pop(campaign.index, None)
            self.done_spent += campaign.spent_s
            self.finished.add(campaign.index)

    def _draw(self) -> None:
        from rich.console import Group

        self._sort_in()
        start = time.perf_counter()
        self.fraction = (len(self.finished) + sum(min(1.0, c.tuning_spent() / c.cap_s)
                                              for c in self.active.values())) / self.total
        self.live.update(Group(_Summary(self), self._tasks()), refresh=True)
        self.drawn_at = time.perf_counter()
        self.draw_s = self.drawn_at - start

    def _tasks(self):
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("task", "method", "seed", "trials", "compute", "best val_nll"):
            table.add_column(column, justify="left" if column in ("task", "method") else
                             "right", no_wrap=True)
        width = max(16, self.console.width - 64)  # long task names give way first
        latest = list(self.latest.items())
        if len(latest) > TASK_ROWS:
            table.caption = f"and {len(latest) - TASK_ROWS} earlier tasks"
        for task, c in latest[-TASK_ROWS:]:
            tuning = sum(1 for r in c.rows if r[S.KIND] != S.RETRAIN)
            done = " \N{CHECK MARK}" if c.index in self.finished else ""
            best = "-" if c.best is None else f"{c.best[0]:.4f} {c.best[1]}" + (
                "" if c.select_by == "val_nll" else f" ({c.select_by})")
            table.add_row(shorten(task, width), c.label + done, str(c.seed), str(tuning),
                          f"{amount(c.tuning_spent())}/{amount(c.cap_s)}", best)
        return table
