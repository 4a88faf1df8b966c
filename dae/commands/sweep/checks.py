"""Checks made before the first trial: the sweep's keys are settings of the configs, every value it can give
fits their types, and the model logs its metric; and the configs' own values of the searched keys."""

from __future__ import annotations

import contextlib
import difflib
import io
from pathlib import Path
from typing import Any, Sequence

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
)

from dae.commands.sweep.spec import SweepSpec
from dae.commands.sweep.trial import (
    QUIET,
    SettingsRefused,
    SweepCLI,
    config_args,
    override_args,
)


class SweepConfigError(ValueError):
    """The sweep's configs and search space do not fit together; the message names the key or metric."""


def checked_settings(spec: SweepSpec) -> list[dict[str, Any]]:
    """Settings of the searched keys that, between them, hold every choice of each categorical and both ends of
    each range, so that parsing each one checks every type of value the sweep can give."""
    values = {key: list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]
              for key, d in spec.params.items()}
    rounds = max(len(v) for v in values.values())
    return [{key: v[i % len(v)] for key, v in values.items()} for i in range(rounds)]


def resolved_config(configs: Sequence[str | Path], settings: dict[str, Any]) -> dict[str, Any]:
    """The full ``dae fit`` config (defaults included) that ``configs`` and ``settings`` give, as plain data.

    Raises ``SweepConfigError`` with the option parser's reason when it refuses them.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            SweepCLI(args=["fit", *config_args(configs), *override_args(settings), "--print_config"])
        except SettingsRefused as e:
            raise SweepConfigError(f"the configs {', '.join(map(str, configs))} refuse the sweep's settings: "
                                   f"{e}") from None
        except SystemExit as e:  # --print_config exits once it has printed
            if e.code not in (0, None):
                raise
    return yaml.safe_load(out.getvalue())


def config_keys(config: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a nested config; ``a.init_args.b`` also as ``a.b``, as the option parser accepts it."""
    keys: set[str] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}{key}"
            keys.add(name)
            keys |= config_keys(value, f"{name}.")
            if key == "init_args":
                keys |= config_keys(value, prefix)
    return keys


def check_keys(spec: SweepSpec, configs: Sequence[str | Path]) -> dict[str, Any]:
    """Fail unless every searched and fixed key is a setting of the configs; returns the resolved base config."""
    base = resolved_config(configs, {})
    known = config_keys(base)
    for group, keys in (("params", spec.params), ("fixed", spec.fixed)):
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]}?)" if close else " (dae fit --print_config lists the settings)"
                raise SweepConfigError(
                    f"{spec.path}: {group}.{key} is not a setting of {', '.join(map(str, configs))}{hint}"
                )
    for settings in checked_settings(spec):  # the option parser checks the types
        resolved_config(configs, {**spec.fixed, **settings})
    return base


def check_metric(spec: SweepSpec, configs: Sequence[str | Path]) -> None:
    """Build the model and data of a trial and run one validation batch; fail unless it logs ``spec.metric``."""
    settings = {**spec.fixed, **checked_settings(spec)[0], **QUIET,
                "trainer.logger": False, "trainer.limit_val_batches": 1}
    with contextlib.redirect_stdout(io.StringIO()):
        cli = SweepCLI(args=[*config_args(configs), *override_args(settings)], run=False, save_config_callback=None)
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    logged = sorted(k for k in cli.trainer.callback_metrics if k.startswith("val/"))
    if spec.metric not in logged:
        close = difflib.get_close_matches(spec.metric, logged, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SweepConfigError(f"{spec.path}: metric {spec.metric} is not logged in validation; {hint}"
                               f"the model logs {', '.join(logged)}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def in_distribution(value: Any, dist: BaseDistribution) -> bool:
    """Whether ``dist`` can give ``value`` (steps are not checked: the sampler rounds to them)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if not is_number(value):
        return False
    return dist.low <= value <= dist.high and (not isinstance(dist, IntDistribution) or float(value).is_integer())


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of a dotted key in a resolved config (``a.b`` also finds ``a.init_args.b``); None if absent."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part not in node and "init_args" in node:
            node = node["init_args"]
        node = node.get(part) if isinstance(node, dict) else None
    return node


def base_values(spec: SweepSpec, base: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The given config's values of the searched keys, for the first trial, which runs that config.

    A number outside its range takes the range's nearest end, so that the trial stays in the search space that
    the sampler models (listed in the second item as ``key value -> new value``). A value with no nearest one (not
    a number, or none of a categorical's choices) is listed in the third item as ``key=value``: then no trial of
    the given config can run.
    """
    values, moved, outside = {}, [], []
    for key, dist in spec.params.items():
        value = nearest = config_value(base, key)
        if not isinstance(dist, CategoricalDistribution) and is_number(value):
            nearest = min(max(value, dist.low), dist.high)
        if not in_distribution(nearest, dist):
            outside.append(f"{key}={value}")
            continue
        if nearest != value:
            moved.append(f"{key} {value} -> {nearest}")
        values[key] = nearest
    return values, moved, outside
