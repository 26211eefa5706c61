"""Row labels of the SEU-Net thesis' tables (papers/003, Tables 5.1-5.6), read from a model's configuration.

Which row a trained model fills (:func:`heads_label` for Tables 5.1 / 5.2, :func:`attention_label` for 5.3,
:func:`training_set_label` for 5.4-5.6), what it is apart from its training set (:func:`model_variant`:
repeats pooled in a row must share it) and how it was trained (:func:`model_scale`). The rules are listed in
:mod:`cytobench.reproduce.brightfield_tables`.
"""

from __future__ import annotations

from pathlib import Path

from cytobench.reproduce.brightfield_eval import TrainedModel

__all__ = [
    "attention_label",
    "attention_version",
    "heads_label",
    "model_scale",
    "model_variant",
    "synthetic_size",
    "training_set_label",
]

NAMED_HEAD_SETS = {
    ("cytoplasm", "nuclei"): "2-head",
    ("cytoplasm", "border", "background"): "3-head",
    ("cytoplasm", "nuclei", "border", "background"): "4-head",
}


def _semantic_heads(model: TrainedModel) -> tuple[str, ...]:
    from cytobench.models.seunet.heads import HEAD_NAMES

    return tuple(h for h in HEAD_NAMES if h in model.heads and h != "overlap")


def _train_set(model: TrainedModel) -> str:
    return str(model.data_config.get("train_set") or "real")


def heads_label(model: TrainedModel) -> str | None:
    """Tables 5.1 / 5.2 row of a model without an overlap head trained on the real set, else None."""
    if "overlap" in model.heads or _train_set(model) != "real":
        return None
    heads, decoder = _semantic_heads(model), str(model.model_config.get("decoder", "shared"))
    if heads == ("cytoplasm",):
        return "SEU-Net (base)"  # one head has one decoder whether shared or decoupled
    if heads in NAMED_HEAD_SETS and decoder == "decoupled":
        return f"SEU-Net ({NAMED_HEAD_SETS[heads]})"
    if heads == ("cytoplasm", "nuclei", "border", "background"):
        return "SEU-Net (multi-channel)"
    return f"SEU-Net ({'+'.join(heads)}, {decoder} decoder)"


def attention_version(key: str | None) -> str | None:
    """``overlap_attention_v2`` -> ``v2``; ``overlap_attention`` (the thesis' final map) -> ``v4``."""
    if not key:
        return None
    return "v4" if key == "overlap_attention" else str(key).rsplit("_", 1)[-1]


def attention_label(model: TrainedModel) -> str | None:
    """Table 5.3 row of a model with an overlap head trained on the real set, else None."""
    if "overlap" not in model.heads or _train_set(model) != "real":
        return None
    loss = str(model.model_config.get("overlap_loss", "focal"))
    version = attention_version(model.model_config.get("attention_key"))
    if loss == "focal" and version:
        return f"SEU-Net + attn. map ({version})"
    return "SEU-Net" if loss == "bce" else "SEU-Net (focal, no attn. map)"


def synthetic_size(folder: str | Path | None) -> int | None:
    """Images of a ``cytobench synth make`` folder (all its split jsons), None when it cannot be read."""
    from cytobench.data.brightfield_sets import synthetic_set_files
    from cytobench.io.files import read_json

    try:
        files = synthetic_set_files(folder)  # type: ignore[arg-type]
        return sum(len(read_json(path).get("images", [])) for path in files)
    except Exception:  # a moved or deleted folder: the row is named after the folder instead
        return None


def training_set_label(model: TrainedModel) -> str:
    """Tables 5.4-5.6 row: ``Original``, ``Synthetic (N)`` or ``Mixed (N)``."""
    train_set = _train_set(model)
    if train_set == "real":
        return "Original"
    folder = model.data_config.get("synthetic_dir")
    size = synthetic_size(folder)
    return f"{train_set.capitalize()} ({size if size is not None else Path(str(folder)).name})"


def model_variant(model: TrainedModel) -> str:
    """What a model is, training set aside: heads, decoder and overlap loss (pooled rows must share it)."""
    cfg = model.model_config
    parts = ["+".join(model.heads), str(cfg.get("decoder", "shared"))]
    if "overlap" in model.heads:
        loss, version = str(cfg.get("overlap_loss", "focal")), attention_version(cfg.get("attention_key"))
        parts.append(loss if loss != "focal" else f"focal, {f'attn. map {version}' if version else 'no map'}")
    return ", ".join(parts)


def model_scale(model: TrainedModel) -> str:
    """How a model was trained (data, network, epochs): each table says it, and warns when they differ."""
    data, cfg, trainer = model.data_config, model.model_config, model.trainer_config or {}
    size = data.get("size") or (data.get("prepare") or {}).get("size") or "?"
    parts = [
        f"{size} px images",
        f"{data.get('n_images', '?')} simulated",
        f"crops {data.get('crop', '?')}",
        f"width {cfg.get('width', '?')} depth {cfg.get('depth', '?')}",
    ]
    if trainer.get("max_epochs") is not None:
        parts.append(f"{trainer['max_epochs']} epochs")
    return ", ".join(parts)
