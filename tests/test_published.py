"""The study's published records as a tabular benchmark (issue 17): every shipped record set
replayed by the grid gives the incumbent its CSVs give; no campaign pays twice for a
configuration; CLML selection; ``bench list records``; bad input."""

import json
import math
import re
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.curves import anytime_curves
from bench.cli import main
from bench.contract import schema as S
from bench.contract.method import FINISHED, Method
from bench.driver.budget import Budget
from bench.driver.campaign import Campaign, CampaignQueue, run_inline
from bench.driver.replay import SimulatedClock, simulate
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.records.journal import AT, Journal, read_journal
from bench.records.published import RECORD_SETS, published_bo
from bench.records.recorded import Recorded, RecordedTask
from bench.records.tables import comparable, frame
from bench.testing import TINY_TASK

SEEDS = (1001, 2001, 3001)
_MODEL = re.compile(r"_n=\d+_random_state=\d+")


def _csv(stem: str, kind: str) -> pd.DataFrame:
    """A shipped CSV read straight from the package, as the study wrote it."""
    raw = pd.read_csv(files("bench.records") / "published_csv" / f"{kind}_{stem}.csv")
    label = raw["method"] if "method" in raw else raw["criterion"]
    raw = raw[label == "l2-sp"]
    return raw.assign(cfg=[_MODEL.sub("", m) for m in raw["model_name"]])


def _expected(name: str, select_by: str = "val_nll") -> dict[tuple[int, int], set[float]]:
    """Per (N, seed): the retrained test accuracy of the full grid's pick (lowest validation
    NLL, or highest CLML); a set, as tied picks would all be right."""
    stems = RECORD_SETS[name].stems
    tuned = pd.concat([_csv(s, "tuned") for s in stems])
    retrained = pd.concat([_csv(s, "retrained") for s in stems])
    out = {}
    for (n, seed), runs in tuned.groupby(["n", "random_state"]):
        score = runs["val_nll"] if select_by == "val_nll" else -runs["val_clml"]
        best = runs[score == score.min()]["cfg"]
        mine = retrained[(retrained["n"] == n) & (retrained["random_state"] == seed)]
        out[(int(n), int(seed))] = set(mine.loc[mine["cfg"].isin(best), "test_acc"])
    return out


def _suite(records: str, tasks, methods: str, seeds=SEEDS, workers: int = 1) -> str:
    tables = "".join(f'[[tasks]]\nname = "{t}"\n' for t in tasks)
    return (f'name = "t"\nrecords = "{records}"\nseeds = {list(seeds)}\n[budget]\n'
            f"workers = {workers}\ncpus_per_worker = 1\ncap_s = 1e12\n{tables}{methods}")


def _tasks(name: str) -> list[str]:
    stems = RECORD_SETS[name].stems
    ns = sorted(set(pd.concat([_csv(s, "tuned") for s in stems])["n"]))
    return [f"{name}-N{n}" for n in ns]


def _replay(tmp_path, text: str) -> pd.DataFrame:
    out = run_replay(parse_replay_suite(text), tmp_path / "out", progress=False)
    return pd.read_parquet(out / S.TRIALS_FILE)


def _finals(trials: pd.DataFrame) -> pd.DataFrame:
    curves = anytime_curves(trials)
    return curves.sort_values(S.K).groupby([S.TASK, S.METHOD, S.SEED]).tail(1)


@pytest.mark.ray
@pytest.mark.parametrize("name", list(RECORD_SETS))
def test_the_replayed_full_grid_finds_the_incumbent_of_every_n_and_seed(tmp_path, name):
    trials = _replay(tmp_path, _suite(f"published:{name}", _tasks(name), "[methods.grid]\n"))
    finals = _finals(trials).set_index([S.TASK, S.SEED])
    expected = _expected(name)
    assert len(finals) == len(expected)
    for (n, seed), accs in expected.items():
        assert finals.loc[(f"{name}-N{n}", seed), S.TEST_ACC] in accs
    # the grid ran every recorded configuration once; runtimes are A100 GPU-seconds
    search = trials[trials[S.KIND] == S.SEARCH]
    recorded = pd.concat([_csv(s, "tuned") for s in RECORD_SETS[name].stems])
    assert (search[S.STATUS] == S.OK).sum() == len(recorded)
    assert search[S.GPU_S].sum() == pytest.approx(recorded["runtime"].sum(), rel=1e-9)
    meta = json.loads((tmp_path / "out" / S.METADATA_FILE).read_text())
    assert meta["compute_unit"] == S.GPU_S


@pytest.mark.ray
def test_clml_selection_picks_the_highest_clml(tmp_path):
    name = "cifar10-convnext-clml"
    methods = '[methods.grid]\n[methods.grid-clml]\nmethod = "grid"\nselect_by = "clml"\n'
    trials = _replay(tmp_path, _suite(f"published:{name}", _tasks(name), methods))
    finals = _finals(trials).set_index([S.TASK, S.METHOD, S.SEED])
    by_nll, by_clml = _expected(name), _expected(name, "clml")
    assert by_nll != by_clml  # the two rules disagree somewhere: the test can tell them apart
    for (n, seed), accs in by_clml.items():
        assert finals.loc[(f"{name}-N{n}", "grid-clml", seed), S.TEST_ACC] in accs
        assert finals.loc[(f"{name}-N{n}", "grid", seed), S.TEST_ACC] in by_nll[(n, seed)]


def _paid_twice(trials: pd.DataFrame) -> pd.DataFrame:
    paid = trials[trials[S.RESOURCE_S].fillna(0) > 0]
    keys = [S.TASK, S.METHOD, S.SEED, S.KIND, S.CONFIG]
    return paid[paid.duplicated(keys, keep=False)]


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 3])
def test_no_campaign_pays_twice_for_a_configuration(tmp_path, workers):
    methods = ("[methods.grid]\n[methods.random]\ntrials = 200\n"
               "[methods.tpe]\ntrials = 60\nstartup_trials = 5\n")
    trials = _replay(tmp_path, _suite("published:pets-resnet50-v1", ["pets-resnet50-v1-N370"],
                                      methods, workers=workers))
    assert _paid_twice(trials).empty
    repeats = trials[trials[S.STATUS] == S.REPEAT]
    assert len(repeats) > 0 and (repeats[S.RESOURCE_S] == 0).all()  # TPE re-proposes
    assert set(repeats[S.METHOD]) == {"tpe"}
    # each repeat carries the result of the run it repeats, which has its configuration
    by_id = trials.set_index([S.SEED, S.METHOD, S.TRIAL_ID])
    for r in repeats.to_dict("records"):
        earlier = by_id.loc[(r[S.SEED], r[S.METHOD], json.loads(r[S.INFO])["repeat_of"])]
        assert earlier[S.CONFIG] == r[S.CONFIG] and earlier[S.STATUS] == S.OK
        assert earlier[S.VAL_NLL] == r[S.VAL_NLL]
    # random search samples the 24-point grid without replacement: all of it, once
    random = trials[(trials[S.METHOD] == "random") & (trials[S.KIND] == S.SEARCH)]
    assert (random.groupby(S.SEED)[S.CONFIG].nunique() == 24).all()
    assert (random.groupby(S.SEED).size() == 24).all()


# -- the campaign core: a repeat is answered from its earlier run, live or replayed


class Listed(Method):
    """Suggests ``configs`` in order; keeps the results it hears."""

    name = "listed"

    def __init__(self, configs=()) -> None:
        self.configs = configs

    def start(self, context) -> None:
        super().start(context)
        self.pending_ = [dict(c) for c in self.configs]
        self.heard_: list = []

    def suggest(self, trial_id: str):
        return self.pending_.pop(0) if self.pending_ else FINISHED

    def on_result(self, result) -> None:
        self.heard_.append(result)


TASK = "toy-N10"
RUNS = {0.1: (10.0, 0.9), 0.01: (4.0, 1.2), 0.001: (10.0, 0.5)}  # lr -> (runtime, val NLL)


def _toy_records() -> pd.DataFrame:
    rows = []
    for lr, (wall, nll) in RUNS.items():
        common = {S.TASK: TASK, S.METHOD: "grid", S.SEED: 0, S.STATUS: S.OK,
                  S.CONFIG: json.dumps({"lr": lr})}
        rows.append({**common, S.KIND: S.SEARCH, S.WALL_S: wall, S.VAL_NLL: nll})
        rows.append({**common, S.KIND: S.RETRAIN, S.WALL_S: 5.0, S.TEST_ACC: 1 - nll / 2})
    return frame(rows, S.TRIAL_COLUMNS)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_repeat_waits_for_its_earlier_run_and_costs_nothing(workers):
    recorded, clock = Recorded(_toy_records()), SimulatedClock()
    order = [0.1, 0.1, 0.01, 0.1, 0.001, 0.01]
    method = Listed([{"lr": lr} for lr in order])
    campaign = Campaign("test", RecordedTask(TASK, recorded.space(TASK)), "listed", method, 0,
                        Budget(workers=workers, cap_s=1e9), 0.0, clock=clock, discrete=True)
    queue = CampaignQueue([lambda: campaign])
    simulate(queue, recorded, workers, clock)
    rows = {r[S.TRIAL_ID]: r for r in campaign.rows}
    statuses = [rows[f"t{j:04d}"][S.STATUS] for j in range(len(order))]
    assert statuses == [S.OK, S.REPEAT, S.OK, S.REPEAT, S.OK, S.REPEAT]
    assert sum(r[S.RESOURCE_S] for r in campaign.rows if r[S.KIND] == S.SEARCH) == \
        pytest.approx(sum(wall for wall, _ in RUNS.values()))
    # the method hears a repeat as the earlier run's result, in trial order
    heard = {r.trial_id: r for r in method.heard_}
    assert [r.trial_id for r in method.heard_] == [f"t{j:04d}" for j in range(len(order))]
    assert heard["t0001"].status == S.OK and heard["t0001"].score == heard["t0000"].score
    assert heard["t0005"].score == RUNS[0.01][1]


def _toy_queue(tmp_path, workers: int, order):
    recorded, clock, finished = Recorded(_toy_records()), SimulatedClock(), []
    journal = Journal(tmp_path / S.JOURNAL_FILE, clock)
    task = RecordedTask(TASK, recorded.space(TASK))
    queue = CampaignQueue([lambda: Campaign(
        "test", task, "listed", Listed([{"lr": lr} for lr in order]), 0,
        Budget(workers=workers, cap_s=1e9), 0.0, clock=clock, discrete=True)],
        on_done=finished.append, log=journal)
    return queue, recorded, clock, finished, journal


@pytest.mark.parametrize("workers", [1, 2])
def test_resuming_a_campaign_with_repeats_from_any_prefix_of_its_journal(tmp_path, workers):
    order = [0.1, 0.1, 0.01, 0.1, 0.001, 0.01]
    queue, recorded, clock, finished, journal = _toy_queue(tmp_path, workers, order)
    simulate(queue, recorded, workers, clock)
    journal.close()
    whole = comparable(frame(finished[0].rows, S.TRIAL_COLUMNS))
    assert (whole[S.STATUS] == S.REPEAT).sum() == 3
    events, _ = read_journal(tmp_path / S.JOURNAL_FILE)
    for cut in range(1, len(events)):
        (tmp_path / str(cut)).mkdir()
        queue, recorded, clock, finished, journal = _toy_queue(tmp_path / str(cut), workers,
                                                               order)
        queue.resume(events[:cut])
        clock.now = events[cut - 1][AT]
        simulate(queue, recorded, workers, clock)
        journal.close()
        assert queue.finished, cut
        pd.testing.assert_frame_equal(comparable(frame(finished[0].rows, S.TRIAL_COLUMNS)),
                                      whole, obj=f"cut at event {cut}")


def test_a_live_campaign_trains_a_configuration_once():
    a, b = ({"lr": lr, "alpha": 1e-3, "beta": 1e-3} for lr in (0.05, 0.01))
    method = Listed([a, a, b, a])
    campaign = Campaign("test", TINY_TASK, "listed", method, 0, Budget(cap_s=1e9), 0.0)
    run_inline(campaign)
    search = [r for r in campaign.rows if r[S.KIND] == S.SEARCH]
    assert [r[S.STATUS] for r in search] == [S.OK, S.REPEAT, S.OK, S.REPEAT]
    first, again = search[0], search[1]
    assert again[S.WALL_S] == 0 and again[S.RESOURCE_S] == 0
    assert again[S.VAL_NLL] == first[S.VAL_NLL] and again[S.CONFIG] == first[S.CONFIG]
    assert json.loads(again[S.INFO])["repeat_of"] == first[S.TRIAL_ID]


@pytest.mark.parametrize("name", [n for n, r in RECORD_SETS.items() if r.bo])
def test_every_bo_trace_scores_only_what_it_retrained(name):
    bo = published_bo(name)
    retrains = bo[bo[S.KIND] == S.RETRAIN]
    assert retrains[S.TEST_ACC].between(0, 1, inclusive="neither").all()
    assert retrains[S.TEST_NLL].map(math.isfinite).all()
    curves = anytime_curves(bo)
    # every trace of every N and seed has a scored incumbent from some iteration on
    assert len(curves.groupby([S.TASK, S.SEED])) == len(bo.groupby([S.TASK, S.SEED]))


# -- bench list records


def test_list_records_names_every_set_with_its_n_seeds_configurations_and_hours(capsys):
    assert main(["list", "records"]) == 0
    out = capsys.readouterr().out
    for name, records in RECORD_SETS.items():
        line = next(li for li in out.splitlines() if li.startswith(f"published:{name} "))
        tuned = pd.concat([_csv(s, "tuned") for s in records.stems])
        retrained = pd.concat([_csv(s, "retrained") for s in records.stems])
        assert " ".join(map(str, sorted(set(tuned["n"])))) in line
        assert "1001 2001 3001" in line
        per_cell = tuned.groupby(["n", "random_state"]).size()
        assert str(per_cell.max()) in line
        hours = (tuned["runtime"].sum() + retrained["runtime"].sum()) / 3600
        assert f" {hours:.0f} " in line


# -- bad input: one line, exit status 2, nothing written

GOOD = _suite("published:cifar10-resnet50", ["cifar10-resnet50-N100"], "[methods.grid]\n")


@pytest.mark.parametrize("suite, message", [
    (GOOD.replace("published:cifar10-resnet50", "published:mnist-resnet50"),
     "unknown published records 'mnist-resnet50'"),
    (GOOD.replace('name = "cifar10-resnet50-N100"', 'name = "pets-vit-N370"'),
     "unknown recorded task 'pets-vit-N370'"),
    (GOOD.replace("cifar10-resnet50-N100", "cifar10-resnet50-N500"),
     "the records hold cifar10-resnet50 at N = 100, 1000, 10000, 50000 only"),
    (GOOD.replace("3001]", "4001]"), "seed 4001 is not in the records"),
    (GOOD.replace("[methods.grid]\n", '[methods.grid]\nselect_by = "clml"\n'),
     'select_by = "clml" needs records with CLML'),
    (GOOD.replace("[methods.grid]\n", '[methods.grid]\nselect_by = "val_acc"\n'),
     "select_by must be one of val_nll, clml"),
    (GOOD.replace('records = "published:cifar10-resnet50"', "records = []"),
     "records must name published:"),
    (GOOD.replace("seeds", "bo = true\nseeds").replace("cifar10-resnet50", "pets-vit")
     .replace("N100", "N370"), "bo = true needs published records with a BO trace"),
])
def test_bad_published_suites_exit_2_with_one_line(tmp_path, capsys, suite, message):
    path = tmp_path / "bad.toml"
    path.write_text(suite)
    assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_published_suite_covers_every_grid_n_and_seed_at_its_full_grid_cost():
    suite = parse_replay_suite((Path(__file__).parent.parent / "suites" / "published.toml")
                               .read_text())
    grids = [n for n in RECORD_SETS if not n.endswith(("-v1", "-clml"))]
    assert len(grids) == 10
    assert {t.name for t in suite.tasks} == {t for n in grids for t in _tasks(n)}
    assert suite.seeds == SEEDS and suite.records.bo
    for task in suite.tasks:
        name, n = task.name.rsplit("-N", 1)
        tuned = pd.concat([_csv(s, "tuned") for s in RECORD_SETS[name].stems])
        cost = tuned[tuned["n"] == int(n)].groupby("random_state")["runtime"].sum().max()
        assert cost <= task.cap_s < cost + 100
    assert math.isclose(suite.budget.cpus_per_worker, 1)


def test_clml_selection_in_a_live_suite_exits_2(tmp_path, capsys):
    live = ('name = "live"\n[[tasks]]\ndataset = "digits"\nn = 60\nbackbone = "small-cnn"\n'
            'image_size = 8\nbatch_size = 16\n[methods.grid]\nselect_by = "clml"\n')
    (tmp_path / "live.toml").write_text(live)
    assert main(["run", str(tmp_path / "live.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'select_by = "clml" needs recorded CLML' in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
