"""What every learned-hyperparameter method shares: per-epoch records of the learned
hyperparameters, the regularizer families whose prior it models, the sweep helper."""

import json
import time

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import Context
from bench.driver.campaign import Campaign, run_inline
from bench.driver.budget import Budget
from bench.driver.suite import parse_suite
from bench.records.tables import frame
from bench.worker.trial import task_data
from bench.zoo.task import Task
from methods._de_elbo import DEELBo
from methods._de_elbo_fit import VariationalHook
from methods._laplace import LaplaceMarglik
from methods._marglik import PriorGroups
from methods._ntk import NTKMarglik

TASK = Task(dataset="digits", n=100, backbone="small-cnn", image_size=8, steps=14,
            batch_size=16, test_limit=200, name="learned-digits")


def _reports(method) -> pd.DataFrame:
    campaign = Campaign("test", TASK, method.name, method, seed=0,
                        budget=Budget(workers=1, cap_s=1e6), clock0=time.perf_counter())
    run_inline(campaign)
    assert all(row[S.STATUS] == S.OK for row in campaign.rows)
    return frame(campaign.reports, S.REPORT_COLUMNS)  # what reports.parquet holds


def test_de_elbo_epochs_record_sigma_lambda_tau_and_the_objective():
    reports = _reports(DEELBo(lrs=(0.1,)))
    assert list(reports[S.STEP]) == [7, 14]  # ceil(100/16) = 7 steps an epoch
    assert list(reports[S.EPOCH]) == pytest.approx([1.0, 2.0])
    for fields in reports[S.METRICS].map(json.loads):
        assert {"sigma", "lambda", "tau", "objective", "train_nll", "kl_term"} <= set(fields)
        assert fields["lambda"] > fields["sigma"] ** 2 and fields["objective"] > 0


@pytest.mark.parametrize("cls, options", [
    (LaplaceMarglik, {"hyper_steps": 3}),
    (NTKMarglik, {"hyper_steps": 2, "subset_size": 8}),
])
def test_marglik_rounds_record_precisions_value_and_terms(cls, options):
    reports = _reports(cls(lrs=(0.1,), schedule="online", burnin_epochs=1, every_epochs=1,
                           **options))
    fields = [json.loads(m) for m in reports[S.METRICS]]
    assert len(fields) == 2 and all("log_marglik" in f for f in fields)
    for f in fields:
        assert f["precision_backbone"] > 0 and f["precision_head"] > 0
        terms = {k: v for k, v in f.items() if k.startswith("marglik_")}
        assert len(terms) == 3, terms
    if cls is LaplaceMarglik:  # laplace-torch: log_lik - (log_det_ratio + scatter) / 2
        for f in fields:
            assert f["log_marglik"] == pytest.approx(
                f["marglik_log_lik"] - 0.5 * (f["marglik_log_det_ratio"]
                                              + f["marglik_scatter"]), rel=1e-4)


def test_the_standard_fit_records_epochs_and_no_empty_extra():
    from baselines import GridSearch

    reports = _reports(GridSearch(max_trials=1))
    assert reports[S.EPOCH].notna().all()
    # the epoch's mean data term only: no Ray fields, no validation keys twice
    assert {k for m in reports[S.METRICS] for k in json.loads(m)} == {"train_nll"}


# ------------------------------------------------------------- regularizer families

@pytest.mark.parametrize("cls", [DEELBo, LaplaceMarglik, NTKMarglik])
@pytest.mark.parametrize("family", ["mars-sp", "layerwise"])
def test_a_learned_method_refuses_a_family_it_does_not_model(cls, family):
    task = Task(dataset="digits", n=100, backbone="small-cnn", image_size=8, regularizer=family)
    with pytest.raises(BenchError, match="learns a Gaussian prior"):
        cls().start(Context.of(task, 0, Budget()))
    cls(allow_regularizer_mismatch=True).start(Context.of(task, 0, Budget()))  # intended


def test_a_suite_pairing_a_learned_method_with_mars_sp_exits_2(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text("[[tasks]]\ndataset = 'digits'\nn = 100\nbackbone = 'small-cnn'\n"
                     "image_size = 8\nregularizer = 'mars-sp'\n[methods.de-elbo]\n")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[methods.de-elbo]" in err and "mars-sp" in err
    assert not out.exists()
    with pytest.raises(BenchError):
        parse_suite(suite.read_text())


def test_weight_decay_is_the_prior_centred_at_zero():
    data = task_data(Task(dataset="digits", n=100, backbone="small-cnn", image_size=8), 0)
    net = data.network()
    wd = PriorGroups(net, "two", centred=False)
    l2sp = PriorGroups(net, "two", centred=True)
    name = net.backbone_parameters()[0][0]
    assert torch.count_nonzero(wd.means[name]) == 0
    assert torch.equal(l2sp.means[name], net.mu0[name])
    hook = VariationalHook(net, 1e-4, 1.0, 100, centred=False)
    assert all(torch.count_nonzero(m) == 0 for m in hook.mu0)
    # at the pretrained weights, the WD prior sees a shift, the L2-SP prior none
    _, _, _, _, sq_wd, _ = hook.prior_terms()
    _, _, _, _, sq_sp, _ = VariationalHook(net, 1e-4, 1.0, 100, centred=True).prior_terms()
    assert float(sq_wd) > 0 and float(sq_sp) == 0
