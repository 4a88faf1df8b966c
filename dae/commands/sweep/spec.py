"""The sweep file: search space, metric and direction, number of trials, sampler and pruner.

A sweep file is YAML::

    metric: val/psnr            # a metric the model logs every validation epoch
    direction: maximize         # or minimize
    n_trials: 16                # trials to run, over all workers (interrupted ones are retried, not counted)
    sampler: {class_path: optuna.samplers.TPESampler, init_args: {seed: 0}}
    pruner: {class_path: optuna.pruners.MedianPruner, init_args: {n_warmup_steps: 1}}
    fixed:                      # dotted config keys set for every trial (e.g. shorter trials)
      trainer.max_epochs: 3
    params:                     # dotted config keys and their distributions
      model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.net.init_args.width: {type: int, low: 8, high: 32, step: 8}
      model.lr_schedule: {type: categorical, choices: [constant, cosine]}

``type`` picks Optuna's ``FloatDistribution``, ``IntDistribution`` or ``CategoricalDistribution``; the other
entries are that class's constructor arguments. ``sampler`` and ``pruner`` name classes of
``optuna.samplers`` / ``optuna.pruners`` (a bare class name is looked up there) and their arguments.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

DISTRIBUTIONS: dict[str, type[BaseDistribution]] = {
    "float": FloatDistribution,
    "int": IntDistribution,
    "categorical": CategoricalDistribution,
}
TOP_KEYS = {"metric", "direction", "n_trials", "sampler", "pruner", "fixed", "params", "study_name", "baseline_trial"}
DEFAULT_SAMPLER = {"class_path": "optuna.samplers.TPESampler", "init_args": {"seed": 0}}
DEFAULT_PRUNER = {"class_path": "optuna.pruners.MedianPruner", "init_args": {"n_warmup_steps": 1}}


class SweepFileError(ValueError):
    """A sweep file that cannot be used; the message names the file and the entry."""


@dataclass
class SweepSpec:
    """What a sweep file says, checked: distributions built, sampler and pruner classes resolved."""

    path: Path
    metric: str
    direction: str
    n_trials: int
    params: dict[str, BaseDistribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    pruner: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    study_name: str = ""
    baseline_trial: bool = True

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """A new sampler as the file describes it, its ``seed`` (if it has one) moved by ``seed_offset``."""
        entry = self.sampler
        seed = entry.get("init_args", {}).get("seed")
        if seed_offset and isinstance(seed, int):
            entry = {**entry, "init_args": {**entry["init_args"], "seed": seed + seed_offset}}
        return build(entry, optuna.samplers, optuna.samplers.BaseSampler, self.path, "sampler")

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """A new pruner as the file describes it."""
        return build(self.pruner, optuna.pruners, optuna.pruners.BasePruner, self.path, "pruner")

    def as_dict(self) -> dict[str, Any]:
        """Plain data that identifies the search (stored with the study, compared on resume)."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "params": {key: optuna.distributions.distribution_to_json(d) for key, d in self.params.items()},
            "fixed": self.fixed,
        }


def resolve_class(class_path: str, module: Any, base: type, path: Path, what: str) -> type:
    """The class ``class_path`` names, a subclass of ``base`` from Optuna (a bare name is looked up in ``module``)."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        module_name = module.__name__
    if not module_name.split(".")[0] == "optuna":
        raise SweepFileError(f"{path}: {what} {class_path!r} is not an Optuna class; use one of optuna.{what}s")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise SweepFileError(f"{path}: {what} {class_path!r} is not a class of {module.__name__}")
    return cls


def build(entry: dict[str, Any], module: Any, base: type, path: Path, what: str) -> Any:
    """Instantiate a ``{class_path, init_args}`` entry naming an Optuna sampler or pruner."""
    cls = resolve_class(entry["class_path"], module, base, path, what)
    try:
        return cls(**entry.get("init_args") or {})
    except (TypeError, ValueError) as e:
        raise SweepFileError(f"{path}: {what} {entry['class_path']}: {e}") from None


def class_entry(value: Any, default: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
    """Normalise ``value`` (absent, a class name, or class_path/init_args) to class_path/init_args."""
    if value is None:
        return dict(default)
    if isinstance(value, str):
        return {"class_path": value, "init_args": {}}
    if isinstance(value, dict) and isinstance(value.get("class_path"), str) and set(value) <= {"class_path", "init_args"}:
        return {"class_path": value["class_path"], "init_args": dict(value.get("init_args") or {})}
    raise SweepFileError(f"{path}: {what} must be a class name or {{class_path: ..., init_args: {{...}}}}, got {value!r}")


def number(value: Any) -> Any:
    """YAML reads ``1e-4`` (no dot) as text; accept it as the number it obviously is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def distribution(key: str, entry: Any, path: Path) -> BaseDistribution:
    """Build the distribution of one search-space entry, e.g. ``{type: float, low: 1e-4, high: 1e-2, log: true}``."""
    if not isinstance(entry, dict) or entry.get("type") not in DISTRIBUTIONS:
        raise SweepFileError(
            f"{path}: params.{key} must be a mapping with type: {' | '.join(DISTRIBUTIONS)} and that "
            f"distribution's arguments, got {entry!r}"
        )
    kind = entry["type"]
    args = {name: number(value) if name in ("low", "high", "step") else value
            for name, value in entry.items() if name != "type"}
    if kind == "int":
        args = {name: int(v) if name in ("low", "high", "step") and isinstance(v, float) and v.is_integer() else v
                for name, v in args.items()}
    try:
        return DISTRIBUTIONS[kind](**args)
    except (TypeError, ValueError) as e:
        raise SweepFileError(f"{path}: params.{key} ({kind}): {e}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; raises ``SweepFileError`` (one line, naming the file and entry) if it is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepFileError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: a sweep file is a mapping with metric, direction, params, ...")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SweepFileError(f"{path}: unknown entries {sorted(unknown)}; a sweep file has {sorted(TOP_KEYS)}")
    for name in ("metric", "params"):
        if name not in raw:
            raise SweepFileError(f"{path}: {name} is missing")
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric:
        raise SweepFileError(f"{path}: metric must be a metric name such as val/psnr, got {metric!r}")
    direction = raw.get("direction", "minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("minimize", "maximize"):
        raise SweepFileError(f"{path}: direction must be minimize or maximize, got {direction!r}")
    n_trials = raw.get("n_trials", 20)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise SweepFileError(f"{path}: n_trials must be a whole number >= 1, got {n_trials!r}")
    params = raw["params"]
    if not isinstance(params, dict) or not params:
        raise SweepFileError(f"{path}: params must map dotted config keys (e.g. model.lr) to distributions")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepFileError(f"{path}: fixed must map dotted config keys to values, got {fixed!r}")
    both = set(fixed) & set(params)
    if both:
        raise SweepFileError(f"{path}: {sorted(both)} both fixed and searched; keep each key in one of them")
    spec = SweepSpec(
        path=path,
        metric=metric,
        direction=direction,
        n_trials=n_trials,
        params={str(key): distribution(str(key), entry, path) for key, entry in params.items()},
        fixed={str(key): value for key, value in fixed.items()},
        sampler=class_entry(raw.get("sampler"), DEFAULT_SAMPLER, path, "sampler"),
        pruner=class_entry(raw.get("pruner"), DEFAULT_PRUNER, path, "pruner"),
        study_name=str(raw.get("study_name") or path.stem),
        baseline_trial=bool(raw.get("baseline_trial", True)),
    )
    spec.make_sampler()  # fail now, not in the first trial
    spec.make_pruner()
    return spec
