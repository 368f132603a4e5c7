"""Runs a suite's campaigns on a pool of long-lived Ray actors (the default backend).

Each of ``budget.workers`` actors holds the budget's CPUs and GPU share for the whole run and
keeps what it built (prepared data, the first network) from trial to trial. The driver
pulls the campaigns' requests and hands each to an idle actor; a trial's epoch reports come
back one call at a time (``bench.worker.stepper``), so the campaign decides on each (prune,
stop at the cap) as under Ray Tune (``bench.driver.ray_runner``, ``bench run --backend
tune``); only a trial its method may prune waits for each decision (``TrialStepper``). An
actor that dies (the OS killed it, a fault) fails its trial and is replaced.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket

import ray
from ray.exceptions import RayActorError, RayError

from bench.contract.protocol import (Decision, EpochReport, FinalResult, TrialRequest,
                                     parse_result)
from bench.driver.budget import Budget
from bench.driver.campaign import CampaignQueue
from bench.worker.trial import TrialSpec


@ray.remote(max_restarts=0, max_task_retries=0)
class TrialWorker:
    """One worker of the pool: runs the trials it is handed, one at a time."""

    def __init__(self, specs: list[TrialSpec]) -> None:
        from bench.worker.stepper import TrialStepper  # torch: on the worker only

        self.specs = specs
        node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        self.stepper = TrialStepper(node)

    def start(self, config: dict, wait: bool) -> dict | None:
        request = TrialRequest.from_config(config)
        return _wire(self.stepper.start(request, self.specs[request.campaign], wait))

    def step(self, stop: bool) -> dict | None:
        return _wire(self.stepper.step(stop))


def _wire(message: EpochReport | FinalResult | None) -> dict | None:
    return None if message is None else message.to_result()


def run_campaigns(queue: CampaignQueue, specs: list[TrialSpec], budget: Budget,
                  faults: dict[tuple[int, str], str] | None = None) -> None:
    """Run every campaign of ``queue`` on ``budget.workers`` actors of the Ray cluster that
    ``ray.init`` connected to. Returns when the queue has nothing left to run (finished,
    or a campaign waits on nothing that runs: the caller checks ``queue.finished``).
    ``faults`` ({(campaign, trial): fault}, see ``bench.worker.faults``) are injected."""
    faults = faults or {}
    specs_ref = ray.put(specs)
    worker = TrialWorker.options(num_cpus=budget.cpus_per_worker,
                                 num_gpus=budget.gpus_per_worker)
    idle = [worker.remote(specs_ref) for _ in range(budget.workers)]
    running: dict = {}  # the pending call -> (its actor, the backend trial id)
    stopped: set[str] = set()  # trials the campaign ended at a report, still unwinding
    ids = (f"pool{n:05d}" for n in itertools.count())
    try:
        while True:
            while idle:
                trial_id = next(ids)
                request = queue.suggest(trial_id)
                if not isinstance(request, TrialRequest):
                    break
                request = dataclasses.replace(
                    request, fault=faults.get((request.campaign, request.trial)))
                actor = idle.pop()
                queue.started(trial_id)
                call = actor.start.remote(request.to_config(), queue.prunes(trial_id))
                running[call] = (actor, trial_id)
            if not running:  # finished, or nothing runs that could change a method's mind
                return
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, trial_id = running.pop(ref)
            try:
                message = parse_result(ray.get(ref))
            except RayError as err:  # the actor died, or failed outside the trial's code
                if trial_id not in stopped:
                    queue.failure_reason(trial_id, err)
                    queue.complete(trial_id, None, error=True)
                stopped.discard(trial_id)
                if not isinstance(err, RayActorError):
                    ray.kill(actor)  # its trial's thread may still hold it
                idle.append(worker.remote(specs_ref))
                continue
            if isinstance(message, EpochReport):
                stop = (trial_id not in stopped
                        and queue.report(trial_id, message) == Decision.STOP)
                if stop:  # it ends here for the campaign, at the report it was stopped at
                    queue.complete(trial_id, None)
                    stopped.add(trial_id)
                running[actor.step.remote(stop)] = (actor, trial_id)
            else:  # its final result, or None once it unwound after a stop
                if trial_id not in stopped:
                    queue.complete(trial_id, message if isinstance(message, FinalResult)
                                   else None)
                stopped.discard(trial_id)
                idle.append(actor)
    finally:
        for actor in idle + [a for a, _ in running.values()]:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - Ray is going down with the driver
                pass

