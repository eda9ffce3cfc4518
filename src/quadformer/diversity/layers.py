"""Which layers of a model the diversity metrics look at (docs/design/diverse_transfer.md §2).

* **Filter layers** (W1, W2): every backbone ``Conv1d/2d/3d`` (grouped and depthwise
  included: one kernel ``C_in/groups · k…`` per output channel) and ``Linear`` (one fan-in
  row per output unit), as ``[K, fan_in]`` matrices. Never the classifier head
  (``model.get_classifier()``), norms, biases, embeddings (pos/cls/register tokens are
  parameters, not filter layers), nor anything under a frozen patch scorer (a
  :class:`~quadformer.tokenize.scorers.base.PatchScorer`, e.g. the Quadformer's ``scorer``).
  For a timm ViT / Quadformer / UniformViT this is ``patch_embed.proj`` (D × C·p_min²),
  and per block ``attn.qkv`` (split into ``attn.q``, ``attn.k``, ``attn.v``; ``qkv="fused"``
  keeps it whole), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``.
* **Activation taps** (A2): a ViT's block outputs ``blocks.<i>``; other timm models: the
  modules named in ``model.feature_info`` (e.g. ResNet ``act1``, ``layer1..4``).
"""

from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

__all__ = ["classifier_modules", "is_vit", "filter_modules", "filter_layers", "activation_taps",
           "tap_channels"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier head: the modules holding :func:`quadformer.models.factory.classifier_keys`
    (timm's ``get_classifier()``); for a plain module without ``get_classifier``, a ``Linear``
    attribute named ``fc``, ``head`` or ``classifier``."""
    from ..models.factory import classifier_keys

    if hasattr(model, "get_classifier"):
        names = sorted({k.rsplit(".", 1)[0] for k in classifier_keys(model)})
        return [model.get_submodule(n) for n in names]
    return [m for a in ("fc", "head", "classifier") if isinstance(m := getattr(model, a, None), nn.Linear)]


def is_vit(model: nn.Module) -> bool:
    """A timm-style ViT (incl. Quadformer/UniformViT): ``patch_embed`` and a ``blocks`` sequence
    whose outputs are token sequences ``[B, T, D]``."""
    return (hasattr(model, "patch_embed") and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))
            and hasattr(model, "num_prefix_tokens"))


def _frozen_scorers(model: nn.Module) -> list[nn.Module]:
    try:
        from ..tokenize.scorers.base import PatchScorer
    except ImportError:  # pragma: no cover
        PatchScorer = ()  # type: ignore[assignment]
    out = [m for m in model.modules() if PatchScorer and isinstance(m, PatchScorer)]
    s = getattr(model, "scorer", None)
    if isinstance(s, nn.Module):
        out.append(s)
    return out


def filter_modules(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Name -> module for the filter layers (see module doc), in ``named_modules`` order.
    ``exclude``: extra name prefixes to leave out (``"layer4"`` drops ``layer4.*``)."""
    skip: set[int] = set()
    for root in classifier_modules(model) + _frozen_scorers(model):
        skip.update(id(m) for m in root.modules())
    prefixes = tuple(exclude)
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if id(m) in skip or (prefixes and any(name == p or name.startswith(p + ".") for p in prefixes)):
            continue
        if isinstance(m, _CONV) or isinstance(m, nn.Linear):
            if getattr(m, "weight", None) is not None and m.weight.dim() >= 2:
                out[name] = m
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out[name] = m  # in_proj (q, k, v); out_proj is a Linear and listed on its own
    return out


def filter_layers(model: nn.Module, qkv: str = "split", exclude: Iterable[str] = ()) -> dict[str, Tensor]:
    """Name -> filter matrix ``[K, fan_in]`` (detached views of the weights, original dtype).

    ``qkv="split"`` (default): a fused attention projection named ``*.qkv`` (and
    ``nn.MultiheadAttention.in_proj_weight``) becomes three layers ``*.q``, ``*.k``, ``*.v``
    (``blocks.0.attn.q`` ...); ``"fused"`` keeps ``*.qkv`` as one layer."""
    if qkv not in ("split", "fused"):
        raise ValueError(f"qkv={qkv!r}; use 'split' or 'fused'")
    out: dict[str, Tensor] = {}
    for name, m in filter_modules(model, exclude).items():
        if isinstance(m, nn.MultiheadAttention):
            w = m.in_proj_weight.detach()
            if qkv == "split":
                for part, rows in zip("qkv", w.chunk(3, 0)):
                    out[f"{name}.{part}"] = rows
            else:
                out[f"{name}.qkv"] = w
            continue
        w = m.weight.detach()
        if isinstance(m, nn.Linear):
            w2 = w
        else:  # conv: [out, in/groups, *k] -> one kernel per output channel
            w2 = w.reshape(w.shape[0], -1)
        if qkv == "split" and name.rsplit(".", 1)[-1] == "qkv" and w2.shape[0] % 3 == 0:
            base = name[: -len("qkv")]
            for part, rows in zip("qkv", w2.chunk(3, 0)):
                out[f"{base}{part}"] = rows
        else:
            out[name] = w2
    return out


def activation_taps(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module whose forward output is an A2 layer: ViT ``blocks.<i>``, else the
    modules named in timm's ``feature_info``; ``{}`` if neither exists."""
    if is_vit(model):
        return {f"blocks.{i}": b for i, b in enumerate(model.blocks)}
    info = getattr(model, "feature_info", None)
    out: dict[str, nn.Module] = {}
    if isinstance(info, (list, tuple)):
        for f in info:
            name = f.get("module") if isinstance(f, dict) else None
            if not name:
                continue
            try:
                out[name] = model.get_submodule(name)
            except AttributeError:
                continue
    return out


def tap_channels(model: nn.Module) -> dict[str, int]:
    """Tap name -> number of channels from timm's ``feature_info`` (to find the channel axis)."""
    info = getattr(model, "feature_info", None)
    out: dict[str, int] = {}
    if isinstance(info, (list, tuple)):
        for f in info:
            if isinstance(f, dict) and f.get("module") and f.get("num_chs"):
                out[f["module"]] = int(f["num_chs"])
    return out
