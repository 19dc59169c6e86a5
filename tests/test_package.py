"""Specification of the package's faces: every public name of a module is reachable from its subpackage, and
importing the package or a low-level subpackage costs only what is used."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import mpqjax

# training's modules share function names (train.finetune and population.finetune), so its face offers the modules
# only; the integrations' modules need optuna or hyperopt, which the face must not import
SUBMODULES_ONLY = {"mpqjax.training", "mpqjax.integrations"}
PACKAGES = sorted(f"mpqjax.{info.name}" for info in pkgutil.iter_modules(mpqjax.__path__) if info.ispkg)


def modules_of(package):
    return [info.name for info in pkgutil.iter_modules(package.__path__)
            if not info.name.startswith("_") and not info.ispkg]


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_public_name_of_a_module_is_on_its_package_face(package_name):
    package = importlib.import_module(package_name)
    for name in modules_of(package):
        module = importlib.import_module(f"{package_name}.{name}")
        assert hasattr(module, "__all__"), f"{module.__name__} declares no __all__"
        if package_name in SUBMODULES_ONLY:
            continue
        assert name in package.__all__, f"{module.__name__} is not on {package_name}'s face"
        for public in module.__all__:
            if public == name:  # search.objective.objective: the face's name is the module (module.objective)
                continue
            assert getattr(package, public) is getattr(module, public), f"{package_name}.{public}"


def test_the_top_level_face_reaches_the_main_entry_points():
    from mpqjax.optim.tpe import KMeansTPE
    from mpqjax.search.config import SearchConfig
    from mpqjax.search.loop import run

    assert mpqjax.KMeansTPE is KMeansTPE and mpqjax.SearchConfig is SearchConfig and mpqjax.run is run
    assert set(PACKAGES) <= {f"mpqjax.{name}" for name in mpqjax.__all__}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mpqjax.nothing  # noqa: B018


@pytest.mark.parametrize("statement, not_loaded", [
    ("import mpqjax", ("jax", "flax", "optax", "numpy")),
    ("import mpqjax.search, mpqjax.training, mpqjax.cli", ("jax", "flax", "optax")),
    ("from mpqjax.cost import cost_report, load_target", ("flax", "optax")),
])
def test_imports_load_only_what_they_use(statement, not_loaded):
    code = f"import sys; {statement}; print([m for m in {not_loaded!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"{statement!r} loaded {loaded}"
