"""The torch-free catalog and the torch registries agree exactly, so that they cannot drift.

A spec is validated against trainables.catalog; a trial loads through trainables.data and builds
through trainables.models. A built-in name without a loader or builder would pass validation and
fail on a worker; a loader or builder without a catalog entry would be refused by validation.
"""

from __future__ import annotations

import pytest

from trainables import catalog
from trainables.data import LoadRequest, dataset_loaders, get_loader
from trainables.models import model_specs

pytestmark = pytest.mark.unit


def test_every_builtin_dataset_has_a_loader_with_the_same_info() -> None:
    loaders = dataset_loaders()
    for name, info in catalog.BUILTIN_DATASETS.items():
        assert name in loaders, f"{name} is in the catalog but trainables.data has no loader"
        registered, loader = loaders[name]
        assert registered == info, name
        assert callable(loader) and loader.__module__.startswith("trainables.data"), name
    # Every loader trainables ships is for a catalog built-in (tests register others).
    shipped = {n for n, (_, load) in loaders.items() if load.__module__.startswith("trainables.")}
    assert shipped == set(catalog.BUILTIN_DATASETS)


def test_every_builtin_model_has_a_builder() -> None:
    specs = model_specs()
    for name in catalog.BUILTIN_MODELS:
        assert name in specs, f"{name} is in the catalog but trainables.models has no builder"
    shipped = {n for n, s in specs.items() if s.builder.__module__.startswith("trainables.")}
    assert shipped == set(catalog.BUILTIN_MODELS)


def test_the_catalog_lists_exactly_what_the_torch_side_can_load_and_build() -> None:
    assert catalog.list_datasets() == sorted(dataset_loaders())
    assert catalog.list_models() == sorted(model_specs())


def test_the_digits_loader_yields_what_its_info_says() -> None:
    info, loader = get_loader("digits")
    train, test = loader(LoadRequest())
    x = train.get_batch([0, 1])
    assert test is None and tuple(x.shape[1:]) == (info.channels, info.size, info.size)
    assert set(train.targets.tolist()) == set(range(info.num_classes))


def test_a_catalog_name_without_a_loader_or_builder_says_how_to_register_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainables.config import ArchRef
    from trainables.models import ModelInput, build_model

    monkeypatch.setattr(catalog, "_DATASETS", dict(catalog._DATASETS))
    monkeypatch.setattr(catalog, "_MODELS", set(catalog._MODELS))
    catalog.register_dataset_info(catalog.DatasetInfo("unit_only", 2, 1, 8, (0.5,), (0.2,), "x"))
    catalog.register_model_name("unit_only_arch")
    assert "unit_only" in catalog.list_datasets() and "unit_only_arch" in catalog.list_models()
    with pytest.raises(KeyError, match=r"no loader: register it with trainables\.data"):
        get_loader("unit_only")
    with pytest.raises(KeyError, match=r"no builder: register it with .*register_model"):
        build_model(ArchRef("unit_only_arch"), ModelInput(1, 8, (0.5,), (0.2,)), 2)
    with pytest.raises(KeyError, match=r"unknown dataset 'nope': choose one of .*digits"):
        get_loader("nope")
