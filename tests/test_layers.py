"""The layering contract (pyproject.toml, checked by `lint-imports` in bin/test) names every
module under apps/: a new module must be placed in a layer, or the contract would not see it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["id"] == "layers")


def _named_modules(contract) -> set[str]:
    names = set()
    for layer in contract["layers"]:
        for name in layer.replace("|", ":").split(":"):
            names.add(name.strip().strip("()"))
    return names


def _modules_under_apps() -> set[str]:
    modules = set()
    for path in (ROOT / "apps").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts or parts[-1] == "__init__":
            continue
        modules.add(".".join(parts))
    return modules


def test_every_module_under_apps_is_in_a_layer():
    named = _named_modules(_layers_contract())

    def placed(module):
        parts = module.split(".")
        return any(".".join(parts[:n]) in named for n in range(2, len(parts) + 1))

    unplaced = sorted(m for m in _modules_under_apps() if not placed(m))
    assert not unplaced, f"add these modules to a layer in pyproject.toml: {unplaced}"


def test_wiring_is_on_top_and_core_at_the_bottom():
    layers = _layers_contract()["layers"]
    assert layers[0] == "chatproject"
    bottom = {name.strip().strip("()") for name in layers[-1].split(":")}
    core = {m for m in _modules_under_apps() if m.startswith("apps.core.")} - {"apps.core.apps"}
    assert core <= bottom, f"core modules outside the bottom layer: {sorted(core - bottom)}"
