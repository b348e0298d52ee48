"""An Optuna search run through Ray Tune: the sampler, its durable study, the space, ASHA.

The Optuna study lives in a database (default RESULTS/optuna.db) under the study's name, so a
search run again continues the same sampler state: its trials keep their numbers, the sampler
sees every finished trial, and only the remaining budget is proposed. Trials a dead driver left
RUNNING in that database are marked FAIL first, so they neither block nor count.
"""

from __future__ import annotations

from typing import Any

from study.spec import SweepSpec, objective_metric


def _sampler(spec: SweepSpec, done: int) -> Any:
    """The sampler, seeded with sampler_seed + the trials already in the study: a resumed search
    draws new random points instead of repeating the first run's."""
    import optuna

    assert spec.search is not None
    cls = getattr(optuna.samplers, spec.search.sampler_class())
    try:
        return cls(seed=spec.search.sampler_seed + done)
    except TypeError:  # samplers without a seed argument
        return cls()


def open_optuna_study(spec: SweepSpec) -> tuple[Any, int, int]:
    """The search's Optuna storage, its COMPLETE trials, and how many RUNNING ones were marked
    FAIL (left behind by a driver that died)."""
    import optuna
    from optuna.trial import TrialState

    assert spec.search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study reports progress itself
    url = spec.optuna_storage()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url)
    directions = [o.direction for o in spec.search.objectives]
    study = optuna.create_study(
        storage=storage, study_name=spec.name, directions=directions, load_if_exists=True
    )
    orphans = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        orphans += 1
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return storage, complete, orphans


def search_param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's search space of the sampled parameters (eps, lr, weight_decay, arch, norm)."""
    from ray import tune

    assert spec.search is not None
    space = spec.search.space
    out: dict[str, Any] = {}

    def continuous(r: Any) -> Any:
        return tune.loguniform(r.low, r.high) if r.log else tune.uniform(r.low, r.high)

    if space.eps is not None:
        out["eps"] = (
            tune.choice([float(e) for e in space.eps])
            if isinstance(space.eps, list)
            else continuous(space.eps)
        )
    for name in ("lr", "weight_decay"):
        if getattr(space, name) is not None:
            out[name] = continuous(getattr(space, name))
    if space.archs is not None:
        out["arch"] = tune.choice([a.to_ref().id for a in space.archs])
    if space.norms is not None:
        out["norm"] = tune.choice(list(space.norms))
    return out


def search_tune_options(spec: SweepSpec, storage: Any, done: int) -> dict[str, Any]:
    """search_alg (OptunaSearch with a concurrency limit) and, when asked, an ASHA scheduler."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    assert spec.search is not None
    se = spec.search
    metrics = [objective_metric(o.metric) for o in se.objectives]
    modes = ["max" if o.direction == "maximize" else "min" for o in se.objectives]
    single = len(metrics) == 1
    searcher = OptunaSearch(
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=_sampler(spec, done),
        study_name=spec.name,
        storage=storage,
    )
    options: dict[str, Any] = {
        "search_alg": ConcurrencyLimiter(searcher, max_concurrent=se.max_concurrent)
    }
    if se.early_stopping.method == "asha":
        options["scheduler"] = ASHAScheduler(
            metric=metrics[0],
            mode=modes[0],
            time_attr="training_iteration",
            max_t=spec.training.epochs,
            grace_period=se.early_stopping.grace_period,
            reduction_factor=se.early_stopping.reduction_factor,
        )
    return options
