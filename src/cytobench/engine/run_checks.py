"""Checks before a run trains: the config's values and types, and what a resumed checkpoint fixes.

Each check raises a one-line :class:`~cytobench.errors.CytobenchError` naming the config key or the
checkpoint and the fault, so ``python train.py`` stops with one line and exit code 2 rather than a
traceback from deep inside torch.

Resuming (``trainer.resume=CKPT``) is exact: the checkpoint's optimizer state, scheduler step, RNG
state and hooks continue as they were, so the values that shaped them (the model, the optimizer and
schedule, the seed, the batch size, the monitored metric, early stopping; ``trainer.max_epochs`` too
when the schedule is cosine) cannot change on resume. A run that asks for other values is refused,
naming them, rather than silently training with the checkpoint's (detectron2 and Lightning restore
the optimizer's own learning rate over the config's). A new run from the checkpoint's weights
(``model.weights_path=CKPT``) takes any values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cytobench.errors import BadInputError

__all__ = [
    "check_config",
    "check_resume_config",
    "check_resume_data",
    "check_trainer_checkpoint",
    "missing_keys",
    "resume_fixed_values",
    "train_config_state",
]

# Trainer settings a checkpoint fixes (its optimizer / scheduler / hook state was made with them).
TRAINER_FIXED = (
    "optimizer",
    "scheduler",
    "grad_accum_steps",
    "clip_grad_norm",
    "amp",
    "monitor",
    "monitor_mode",
    "early_stopping",
)
# Model keys that only choose initial weights, which resuming replaces: free to differ.
WEIGHT_KEYS = ("weights_path", "backbone_weights_path", "trust_weights")
# What a checkpoint of the shared trainer holds (cytobench.engine.trainer.Trainer.state_dict).
TRAINER_STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "hooks", "rng")
YOLO_TARGETS = ("cytobench.models.yolo.build_yolo", "cytobench.models.yolo.YoloModel")


# ------------------------------------------------------------------------------------ config values
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(
    low: float, *, strict: bool = False, high: float | None = None
) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if strict else v >= low
        return above and (high is None or v < high)

    rule = f"a number {'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
    return ok, rule


def _optional(check: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or check[0](v)), f"null or {check[1]}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + " / ".join(choices)


_BOOL = ((lambda v: isinstance(v, bool)), "true or false")
_TEXT = ((lambda v: v is None or isinstance(v, str)), "null or a text")
_MILESTONES = (
    (
        lambda v: (
            isinstance(v, Sequence) and not isinstance(v, str) and all(_is_number(m) and m >= 0 for m in v)
        )
    ),
    "a list of epochs >= 0",
)

# key -> (check, rule); keys a config does not have are skipped.
CONFIG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_is_int, "an integer"),
    "trainer.max_epochs": _int_at_least(1),
    "trainer.grad_accum_steps": _int_at_least(1),
    "trainer.log_every": _int_at_least(1),
    "trainer.eval_period": _int_at_least(1),
    "trainer.checkpoint_period": _int_at_least(1),
    "trainer.clip_grad_norm": _optional(_number(0, strict=True)),
    "trainer.amp": _BOOL,
    "trainer.deterministic": _BOOL,
    "trainer.progress": _BOOL,
    "trainer.find_unused_parameters": _BOOL,
    "trainer.monitor": _TEXT,
    "trainer.monitor_mode": _one_of("max", "min"),
    "trainer.device": ((lambda v: isinstance(v, str)), "a device name (auto, cpu, cuda, cuda:N)"),
    "trainer.resume": _TEXT,
    "trainer.optimizer.name": _one_of("sgd", "adamw"),
    "trainer.optimizer.lr": _number(0, strict=True),
    "trainer.optimizer.momentum": _number(0, high=1),
    "trainer.optimizer.weight_decay": _number(0),
    "trainer.scheduler.name": _one_of("constant", "step", "multistep", "cosine"),
    "trainer.scheduler.milestones": _MILESTONES,
    "trainer.scheduler.gamma": _number(0, strict=True),
    "trainer.scheduler.step_size": _number(0, strict=True),
    "trainer.scheduler.warmup_steps": _int_at_least(0),
    "trainer.scheduler.warmup_factor": _number(0, strict=True),
    "trainer.scheduler.min_factor": _number(0),
    "trainer.early_stopping.patience": _int_at_least(0),
    "trainer.early_stopping.metric": _TEXT,
    "trainer.early_stopping.mode": _optional(_one_of("max", "min")),
    "trainer.early_stopping.min_delta": _number(0),
    "data.batch_size": _int_at_least(1),
    "data.num_workers": _int_at_least(0),
}
_ABSENT = object()


def missing_keys(cfg: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (mandatory, not given), found without resolving interpolations.

    (``OmegaConf.missing_keys`` resolves them, so it raises at the first interpolation of a missing value.)
    """
    out: list[str] = []
    keys = range(len(cfg)) if isinstance(cfg, ListConfig) else list(cfg.keys())
    for key in keys:
        node = cfg._get_node(key)
        name = f"{prefix}{key}" if isinstance(cfg, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        if node is None or OmegaConf.is_interpolation(cfg, key):
            continue
        if isinstance(node, DictConfig | ListConfig):
            if not node._is_missing() and not node._is_none():
                out += missing_keys(node, f"{name}.")
            elif node._is_missing():
                out.append(name)
        elif node._is_missing():
            out.append(name)
    return out


def check_config(cfg: DictConfig) -> None:
    """Refuse a training config with missing values or values of the wrong type or range.

    Args:
        cfg: the composed ``conf/train.yaml`` (a ``hydra`` node, if present, is ignored).

    Raises:
        BadInputError: naming the key(s), e.g. ``trainer.max_epochs: must be an integer >= 1, got 'abc'``,
            or the mandatory values (``???``) that were not given, e.g. ``data=coco`` without its paths.
    """
    missing = sorted(k for k in missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        example = f"{missing[0]}=..."
        raise BadInputError(
            ", ".join(missing),
            f"no value given (the config marks {'them' if len(missing) > 1 else 'it'} ???); "
            f"set {'them' if len(missing) > 1 else 'it'} on the command line, e.g. {example}",
        )
    for key, (ok, rule) in CONFIG_RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not ok(value):
            raise BadInputError(key, f"must be {rule}, got {value!r}")


# ---------------------------------------------------------------------------------------- resume
def train_config_state(seed: int, trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What ``train.py`` adds to every checkpoint so a resume can be checked: plain data only."""
    return {"seed": seed, "trainer_config": dict(trainer_cfg)}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value


def resume_fixed_values(
    *,
    seed: Any,
    trainer_cfg: Mapping[str, Any] | None,
    model_cfg: Mapping[str, Any] | None,
    data_cfg: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The values a checkpoint fixes, flattened to dotted config keys (``trainer.optimizer.lr``: 0.005).

    Pieces given as None (a checkpoint written before they were stored) contribute nothing.
    """
    out: dict[str, Any] = {}
    if seed is not None:
        out["seed"] = seed
    if data_cfg is not None and "batch_size" in data_cfg:
        out["data.batch_size"] = data_cfg["batch_size"]
    if trainer_cfg is not None:
        for key in TRAINER_FIXED:
            if key in trainer_cfg:
                _flatten(f"trainer.{key}", trainer_cfg[key], out)
        if (trainer_cfg.get("scheduler") or {}).get("name") == "cosine":
            out["trainer.max_epochs"] = trainer_cfg.get("max_epochs")  # the cosine's length
    if model_cfg is not None:
        _flatten("model", {k: v for k, v in model_cfg.items() if k not in WEIGHT_KEYS}, out)
    return out


def _optimizer_values(state: Mapping[str, Any]) -> dict[str, Any]:
    """Optimizer settings read from the optimizer state itself (checkpoints without ``trainer_config``)."""
    groups = (state.get("optimizer") or {}).get("param_groups") or [{}]
    group = groups[0]
    out = {}
    if "initial_lr" in group:  # the configured lr (LambdaLR stores it before scaling ``lr``)
        out["trainer.optimizer.lr"] = group["initial_lr"]
    for key in ("momentum", "weight_decay"):
        if key in group:
            out[f"trainer.optimizer.{key}"] = group[key]
    return out


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    return str(value).replace("\n", " ")


def check_trainer_checkpoint(state: Any, path: str | Path) -> None:
    """Refuse to resume from anything but a checkpoint of the shared trainer (e.g. a YOLO checkpoint).

    Raises:
        BadInputError: naming the file and what it is instead.
    """
    start_new = f"to train on from its weights, start a new run with model.weights_path={path}"
    if not isinstance(state, Mapping):
        raise BadInputError(path, "not a cytobench training checkpoint (no state dict); cannot resume")
    model_cfg = state.get("model_config") or (state.get("cytobench") or {}).get("model_config") or {}
    if "cytobench" in state or model_cfg.get("_target_") in YOLO_TARGETS:
        raise BadInputError(
            path,
            "is a YOLO (ultralytics) checkpoint; trainer.resume is supported only for the shared trainer's "
            f"checkpoints (last.pt / best.pt of a torch run); {start_new}",
        )
    missing = [k for k in TRAINER_STATE_KEYS if k not in state]
    if missing:
        raise BadInputError(
            path,
            f"holds no training state ({', '.join(missing)} missing), so it cannot be resumed; {start_new}",
        )


def check_resume_config(state: Mapping[str, Any], path: str | Path, cfg: DictConfig) -> None:
    """Refuse a resume whose config asks for values other than those the checkpoint fixes.

    Args:
        state: the loaded checkpoint (see :func:`train_config_state` for what ``train.py`` stores).
        path: the checkpoint file (named in the error).
        cfg: this run's composed config.

    Raises:
        BadInputError: one line naming each differing key with the checkpoint's value and this run's.
    """
    stored_trainer = state.get("trainer_config")
    ckpt = resume_fixed_values(
        seed=state.get("seed"),
        trainer_cfg=stored_trainer,
        model_cfg=state.get("model_config"),
        data_cfg=state.get("data_config"),
    )
    if stored_trainer is None:  # written before trainer_config was stored: read the optimizer itself
        ckpt.update(_optimizer_values(state))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    ours = resume_fixed_values(
        seed=container.get("seed"),
        trainer_cfg=container.get("trainer"),
        model_cfg=container.get("model"),
        data_cfg=container.get("data"),
    )
    differ = [key for key in ckpt if key not in ours or ours[key] != ckpt[key]]
    if not differ:
        return
    shown = [f"{key}={_show(ckpt[key])} (this run: {_show(ours.get(key, '<unset>'))})" for key in differ[:4]]
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    raise BadInputError(
        path,
        f"the checkpoint fixes {', '.join(shown)}{more}; resume without changing "
        f"{'it' if len(differ) == 1 else 'them'}, or start a new run from its weights with "
        f"model.weights_path={path}",
    )


def check_resume_data(
    state: Mapping[str, Any], path: str | Path, num_classes: int, categories: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse a resume on data whose categories differ from those the checkpoint was trained on.

    Args:
        num_classes: this run's class count (categories + background), as the model is built with.
        categories: this run's COCO categories (``id``, ``name``).

    Raises:
        BadInputError: naming the checkpoint and both category lists.
    """
    stored = state.get("num_classes")
    names = [str(c.get("name")) for c in categories]
    stored_names = [str(c.get("name")) for c in state.get("categories") or []]
    differs = stored is not None and int(stored) != int(num_classes)
    differs = differs or bool(stored_names and names and stored_names != names)
    if differs:
        theirs = ", ".join(stored_names) or f"{int(stored) - 1} categories"
        raise BadInputError(
            path,
            f"was trained on {int(stored) - 1 if stored is not None else len(stored_names)} categories "
            f"({theirs}) but this run's data has {num_classes - 1} ({', '.join(names)}); resume on the data "
            f"it was trained on, or start a new run from its weights with model.weights_path={path}",
        )
