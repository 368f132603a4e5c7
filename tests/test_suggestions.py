"""Every suggestion is checked at the door (issue 24), by one code path live and in replay:
a configuration missing a parameter, naming one the space lacks, or holding NaN or a value
outside the space stops the campaign with a BadSuggestion naming the method, the hook, the
trial and what is wrong; nothing is trained with a default in its place."""

import math
import time

import pytest

from baselines import RandomSearch
from bench.contract.space import Param, suggestion_problems
from bench.driver.campaign import BadSuggestion, Campaign, CampaignQueue, run_inline
from bench.driver.budget import Budget
from bench.testing import TINY_TASK, _recorded


def _breaking(how: str):
    class Broken(RandomSearch):
        name = f"broken-{how}"

        def suggest(self, trial_id):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            first = next(iter(config))
            if how == "missing":
                return {k: v for k, v in config.items() if k != "beta"}
            if how == "extra":
                return {**config, "gamma": 0.5}
            if how == "nan":
                return {**config, first: math.nan}
            return {**config, "lr": 50.0}  # outside

    return Broken


WHAT = {"missing": "missing beta", "extra": "not in the space: gamma",
        "nan": "= nan is not a finite number", "outside": "lr = 50.0 is "}


@pytest.mark.parametrize("how", WHAT)
def test_a_bad_suggestion_stops_a_live_campaign_naming_it(how):
    campaign = Campaign("s", TINY_TASK, f"label-{how}", _breaking(how)(trials=2), seed=0,
                        budget=Budget(workers=1, cap_s=60), clock0=time.perf_counter())
    with pytest.raises(BadSuggestion) as err:
        run_inline(campaign)
    message = str(err.value)
    assert f"method 'label-{how}' suggest() gave trial t0000 a bad configuration" in message
    assert WHAT[how] in message and "the space is lr, alpha, beta" in message
    assert campaign.rows == []  # nothing ran


@pytest.mark.parametrize("how", WHAT)
def test_a_bad_suggestion_stops_a_replay_the_same_way(how):
    from bench.driver.replay import SimulatedClock, simulate

    recorded, task, seed, grid_s = _recorded()
    budget, clock = Budget(workers=2, cap_s=grid_s), SimulatedClock()
    plan = lambda: Campaign("r", task, f"label-{how}", _breaking(how)(trials=2), seed,  # noqa
                            budget, 0.0, clock=clock, discrete=True)
    with pytest.raises(BadSuggestion) as err:
        simulate(CampaignQueue([plan]), recorded, budget.workers, clock)
    message = str(err.value)
    assert f"method 'label-{how}' suggest() gave trial t0000 a bad configuration" in message
    assert WHAT[how].split(" is ")[0] in message


SPACE = (Param("lr", 1e-3, 0.1, grid=(0.1, 0.01)), Param("alpha", 1e-4, 1e-2, grid=(0.0,)))


@pytest.mark.parametrize("config, discrete, learned, problems", [
    ({"lr": 0.05, "alpha": 1e-3}, False, False, []),
    ({"lr": 0.05, "alpha": 0.0}, False, False, []),  # a grid value outside the range
    ({"lr": 0.05}, False, False, ["missing alpha"]),
    ({"lr": 0.05}, False, True, []),  # a learned method learns alpha
    ({"lr": 0.05, "beta": 1.0}, False, True, ["not in the space: beta"]),
    ({"lr": 0.2, "alpha": 1e-3}, False, False, ["lr = 0.2 is outside [0.001, 0.1]"]),
    ({"lr": 0.05, "alpha": 1e-3}, True, False, ["lr = 0.05 is none of its recorded values "
                                                 "(0.1, 0.01)", "alpha = 0.001 is none"]),
    ({"lr": 0.1, "alpha": 0.0}, True, False, []),
    ({"lr": "0.1", "alpha": 0.0}, False, False, ["lr = '0.1' is not a finite number"]),
    ({"lr": True, "alpha": 0.0}, False, False, ["lr = True is not a finite number"]),
    ("lr=0.1", False, False, ["a configuration is a dict"]),
])
def test_suggestion_problems_in_words(config, discrete, learned, problems):
    found = suggestion_problems(config, SPACE, discrete, learned)
    for expected in problems:
        assert any(p.startswith(expected) for p in found), (expected, found)
    assert bool(found) == bool(problems)
