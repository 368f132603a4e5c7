"""Replay with one worker, campaign by campaign, in parallel processes.

With one worker a replay runs its campaigns strictly one after another: the next campaign
starts at the simulated instant the previous one finished (``CampaignQueue`` asks for a new
trial only when the worker is free, and a campaign only ends with no trial running). So each
campaign can be simulated alone, from time 0, and its times shifted afterwards to where the
serial run starts it (the sum of the durations before it). Every campaign is simulated this
way, in this process (``jobs = 1``) or in a pool of forked ones, so the records do not depend
on ``jobs``. With several workers campaigns overlap and share the pool: ``simulate`` runs them
together in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from bench.contract import schema as S
from bench.driver.campaign import Campaign, CampaignQueue
from bench.driver.forked import fork_map
from bench.driver.replay import SimulatedClock, simulate
from bench.driver.run_output import campaign_plans
from bench.driver.suite import Suite
from bench.records.recorded import Recorded


@dataclass
class CampaignRun:
    """One campaign simulated alone: its rows (times from its own start), report rows,
    and how long it took in simulated seconds."""

    index: int
    rows: list[dict]
    reports: list[dict]
    duration_s: float
    spent_s: float
    cap_s: float
    failed: bool = False  # it raised: the driver simulates it again to raise here

    def shift(self, start_s: float) -> None:
        """Move its rows to a run that started it at ``start_s``."""
        for row in self.rows:
            row[S.STARTED_S] += start_s
            row[S.ENDED_S] += start_s


def simulate_campaign(suite: Suite, recorded: Recorded, index: int) -> CampaignRun:
    """Campaign ``index`` of ``suite`` (``campaign_plans`` order) against the records, alone
    on one worker from simulated time 0."""
    task, seed, spec = campaign_plans(suite)[index]
    clock = SimulatedClock()
    built: list[Campaign] = []
    ended: list[float] = []

    def build() -> Campaign:
        built.append(Campaign(suite.name, task, spec.label, spec.build(), seed, suite.budget,
                              0.0, clock=clock, discrete=True, plugin=spec.plugin))
        return built[0]

    queue = CampaignQueue([build], on_done=lambda campaign: ended.append(clock.now))
    simulate(queue, recorded, 1, clock)
    campaign = built[0]
    campaign.index = index
    return CampaignRun(index, campaign.rows, campaign.reports, ended[0] if ended else clock.now,
                       campaign.spent_s, campaign.cap_s)


def simulate_each(suite: Suite, recorded: Recorded, jobs: int, on_done=None
                  ) -> tuple[list[CampaignRun], float]:
    """Every campaign of a one-worker replay, each alone, in ``jobs`` processes; their times
    shifted into one serial run. ``on_done(run, summary)`` hears each in suite order (the
    summary has what progress lines read of a campaign). Returns the runs and the simulated
    seconds of the whole replay."""
    def alone(index: int) -> CampaignRun:
        try:
            return simulate_campaign(suite, recorded, index)
        except Exception:  # noqa: BLE001 - raised again in the driver, traceback and all
            if jobs <= 1:
                raise
            return CampaignRun(index, [], [], 0.0, 0.0, 0.0, failed=True)

    indices = list(range(len(campaign_plans(suite))))
    runs = _in_order(fork_map(alone, indices, jobs), suite, recorded, on_done)
    return runs, sum(run.duration_s for run in runs)


def _in_order(runs, suite: Suite, recorded: Recorded, on_done) -> list[CampaignRun]:
    plans, out, start = campaign_plans(suite), [], 0.0
    for run in runs:
        if run.failed:  # a method raised in the child: raise it here, traceback and all
            simulate_campaign(suite, recorded, run.index)
            raise RuntimeError(f"campaign {run.index} failed in a replay process only")
        run.shift(start)
        start += run.duration_s
        out.append(run)
        if on_done is not None:
            task, seed, spec = plans[run.index]
            on_done(run, SimpleNamespace(
                index=run.index, task=task, seed=seed, label=spec.label, rows=run.rows,
                spent_s=run.spent_s, cap_s=run.cap_s, budget=suite.budget))
    return out
