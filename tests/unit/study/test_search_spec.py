"""Search specs: valid ones expand to a Tune space; each invalid one is a one-line error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.cli import main
from study.spec import load_spec, objective_metric
from trainables.payload import apply_search_params

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((ROOT / "sweeps" / "search.yaml").read_text())


def variant(tmp_path: Path, change: Any) -> Path:
    spec = copy.deepcopy(BASE)
    change(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_example_search_spec_is_valid_and_builds_its_trials() -> None:
    spec = load_spec(ROOT / "sweeps" / "search.yaml")
    assert spec.search is not None and spec.expand() == []
    assert spec.search.sampler_class() == "NSGAIISampler"
    assert [objective_metric(o.metric) for o in spec.search.objectives] == [
        "test/acc_clean",
        "objective/transfer/digits-c56789",
    ]
    base = spec.base_config()
    cfg = apply_search_params(base, {"eps": 0.7, "lr": 0.002}, {})
    assert (cfg.eps, cfg.optim.lr, cfg.arch, cfg.source) == (0.7, 0.002, base.arch, base.source)
    assert cfg.key != base.key


def drop_grid_and_search(s: dict) -> None:
    del s["search"]


def add_grid(s: dict) -> None:
    s["grid"] = {"sources": ["digits"], "archs": ["small_cnn"], "norms": ["l2"]} | {
        "eps": [0.0],
        "seeds": [0],
    }


CASES = {
    "neither": (drop_grid_and_search, "grid = None: give a grid"),
    "both": (add_grid, "search = 'both': give either grid"),
    "objective": (
        lambda s: s["search"]["objectives"].append({"metric": "transfer:cifar10"}),
        "search.objectives.2.metric = 'transfer:cifar10': no evaluation produces",
    ),
    "sampler": (
        lambda s: s["search"].update(sampler="annealing"),
        "search.sampler = 'annealing': unknown Optuna sampler",
    ),
    "asha": (
        lambda s: s["search"].update(early_stopping={"method": "asha"}),
        "search.early_stopping.method = 'asha': ASHA stops trials",
    ),
    "asha_robust_eval": (
        lambda s: (
            s["search"].update(
                objectives=[{"metric": "test_acc_pgd"}], early_stopping={"method": "asha"}
            ),
            s.setdefault("training", {}).update(robust_eval_every=5),
        ),
        "training.robust_eval_every = 5: ASHA compares test_acc_pgd at every epoch",
    ),
    "log_range": (
        lambda s: s["search"]["space"].update(lr={"low": 0.0, "high": 0.1, "log": True}),
        "search.space.lr.low = 0.0: a log-scale range needs low > 0",
    ),
    "range_order": (
        lambda s: s["search"]["space"].update(eps={"low": 2.0, "high": 1.0}),
        "search.space.eps.low = 2.0: low must be below high",
    ),
    "empty_space": (
        lambda s: s["search"].update(space={}),
        "search.space = {}: the search space is empty",
    ),
    "budget": (lambda s: s["search"].update(num_trials=0), "search.num_trials = 0"),
    "remote_storage": (
        lambda s: s["output"].update(results_dir="s3://b/x", tracking_uri="http://127.0.0.1:5000"),
        "search.storage = None: results_dir is a URI",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_invalid_search_spec_is_one_line_naming_the_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, expected = CASES[case]
    assert main(["validate", str(variant(tmp_path, change))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert expected in err, err


def test_a_single_objective_search_gets_asha_and_optuna_with_its_storage(tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    from study.search import open_optuna_study, search_param_space, search_tune_options

    def single(s: dict) -> None:
        s["search"].update(
            objectives=[{"metric": "test_acc_pgd"}],
            early_stopping={"method": "asha", "grace_period": 1, "reduction_factor": 3},
            sampler="tpe",
        )
        s["output"] = {"results_dir": str(tmp_path / "results")}

    spec = load_spec(variant(tmp_path, single))
    storage, done, orphans = open_optuna_study(spec)
    assert (done, orphans) == (0, 0) and (tmp_path / "results" / "optuna.db").is_file()
    options = search_tune_options(spec, storage, done)
    assert isinstance(options["scheduler"], ASHAScheduler)
    searcher = options["search_alg"].searcher
    assert searcher.metric == "test/acc_pgd" and searcher.mode == "max"
    assert set(search_param_space(spec)) == {"eps", "lr"}
