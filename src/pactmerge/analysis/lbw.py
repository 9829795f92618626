"""Load-bearing-wall (LBW) diagnostics of a set of task vectors, on state dicts.

For every matrix key (chosen by ``pactmerge.merging.KeyPolicy``, as the merges choose them):

* intrusion energy ``E_in(t) = ‖τt V0‖F² / ‖τt‖F²`` before and after the PACT filter;
* subspace similarity ``Sim(i, j) = ‖Viᵀ Vj‖F² / k`` of the task cores;
* interference ``Inf(i, j) = ‖τj Ri‖F² / ‖τj‖F²``: the share of task j's update that writes
  into task i's reliance space (row i, column j), before and after PACT (the reliance spaces
  are always those of the original task vectors).

Aggregates are plain means over keys: per task, per transformer block ("layer") and per
component (``attn_in`` = packed q/k/v ``in_proj_weight``, ``attn_out`` = ``out_proj.weight``,
``mlp_in`` = ``c_fc.weight``, ``mlp_out`` = ``c_proj.weight``, ``other`` = everything else,
e.g. ``positional_embedding`` and ``proj``). The "most affected" keys are the top
``top_fraction`` of keys by mean off-diagonal interference before PACT (by mean intrusion
energy when there is a single task); Sim and Inf are reported over all keys and over those.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from pactmerge.analysis.subspaces import energy_share, interference_matrix, key_spaces, similarity_matrix
from pactmerge.errors import ConfigError, MergeError
from pactmerge.merging import as_matrix, resolve_device

log = logging.getLogger(__name__)
Tensor = torch.Tensor

_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|layers|blocks)\.(\d+)\.")
_COMPONENTS = (
    ("attn_in", re.compile(r"(in_proj_weight|qkv\.weight)$")),
    ("attn_out", re.compile(r"(attn\.out_proj\.weight|attn\.proj\.weight)$")),
    ("mlp_in", re.compile(r"(c_fc\.weight|fc1\.weight)$")),
    ("mlp_out", re.compile(r"(c_proj\.weight|fc2\.weight)$")),
)
COMPONENTS = ("attn_in", "attn_out", "mlp_in", "mlp_out", "other")


@dataclass
class LBWConfig:
    """Ranks and options of the analysis.

    ``K``/``k``: pre-trained and task core ranks (the PACT defaults); ``top_fraction``: share of
    keys averaged as "most affected"; ``pact``: also measure after the PACT filter, with
    ``pact_params`` passed to ``PACTConfig`` (``K`` and ``k`` are taken from here);
    ``conv_as_matrix``/``exclude``: the merges' key policy; ``svd``: "exact" or "randomized"
    truncated SVDs for the cores (both here and inside PACT); ``device``: where the linear
    algebra runs ("auto": CUDA when available).
    """

    K: int = 15
    k: int = 8
    top_fraction: float = 0.25
    pact: bool = True
    pact_params: dict[str, Any] = field(default_factory=dict)
    conv_as_matrix: bool = False
    exclude: tuple[str, ...] = ()
    rtol: float = 1e-6
    svd: str = "exact"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.svd not in ("exact", "randomized"):
            raise ConfigError(f"svd must be 'exact' or 'randomized', got {self.svd!r}")
        if self.K < 0 or self.k < 0:
            raise ConfigError(f"K and k must be >= 0, got K={self.K}, k={self.k}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")


def block_of(key: str) -> str:
    """The transformer block index of ``key`` as a string, or ``"other"``."""
    m = _BLOCK.search(key)
    return m.group(1) if m else "other"


def component_of(key: str) -> str:
    for name, pattern in _COMPONENTS:
        if pattern.search(key):
            return name
    return "other"


def check_compatible(pretrained: Mapping[str, Tensor], finetuned: Mapping[str, Mapping[str, Tensor]]) -> None:
    """Raise ``MergeError`` naming the model and the keys when a fine-tuned state differs from
    the pre-trained one in key names or shapes."""
    from pactmerge.merging.sources import require_same_layout

    for name, sd in finetuned.items():
        require_same_layout(pretrained, sd, ref_name="the pre-trained encoder", other_name=name, error=MergeError)


def _matrix_keys(pretrained: Mapping[str, Tensor], cfg: LBWConfig) -> list[str]:
    from pactmerge.merging import KeyPolicy

    policy = KeyPolicy(conv_as_matrix=cfg.conv_as_matrix, exclude=tuple(cfg.exclude))
    return [k for k, v in pretrained.items() if policy.kind(k, v) == "matrix"]


def make_pact_config(params: Mapping[str, Any], shape: tuple[int, int] | None = None):
    """A checked ``PACTConfig`` from user parameters (unknown keys and bad types are ``MergeError``s).

    With ``shape`` (m, n), fixed ranks larger than ``min(m, n)`` are clipped to it, as the
    analysis' own cores are (a small matrix has no more directions to protect)."""
    import dataclasses

    from pactmerge.merging import PACTConfig
    from pactmerge.merging.params import parse_params

    cfg = parse_params(PACTConfig, params, "pact")
    if shape is not None:
        cap = min(shape)
        cfg = dataclasses.replace(cfg, K=min(cfg.K, cap), k=min(cfg.k, cap))
    cfg.check()
    return cfg


def _pact_clean(w0: Tensor, taus: list[Tensor], cfg: LBWConfig, key: str) -> tuple[list[Tensor], list[dict]]:
    from pactmerge.merging import pact_filter

    from pactmerge.merging import SVDOptions

    pcfg = make_pact_config({**cfg.pact_params, "K": cfg.K, "k": cfg.k}, tuple(w0.shape))
    svd = SVDOptions(svd=cfg.svd)
    cleaned, diags = pact_filter(w0.to(torch.float64), [t.to(torch.float64) for t in taus], pcfg, key, svd=svd)
    return [c.to(torch.float64) for c in cleaned], list(diags)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _mean_matrix(mats: list[list[list[float]]]) -> list[list[float]]:
    if not mats:
        return []
    n = len(mats[0])
    return [[_mean([m[i][j] for m in mats]) for j in range(n)] for i in range(n)]


def analyze_key(w0: Tensor, taus: list[Tensor], tasks: list[str], cfg: LBWConfig, key: str = "<matrix>") -> dict[str, Any]:
    """All diagnostics of one matrix key (``w0`` and ``taus`` of equal shape; >2-D are viewed as (out, rest))."""
    w0m, tm = as_matrix(w0), [as_matrix(t) for t in taus]
    spaces = key_spaces(w0m, tm, cfg.K, cfg.k, cfg.rtol, cfg.svd)
    rec: dict[str, Any] = {
        "shape": list(w0m.shape),
        "E_in_before": {t: energy_share(spaces.taus[i], spaces.v0) for i, t in enumerate(tasks)},
        "Sim": similarity_matrix(spaces),
        "Inf_before": interference_matrix(spaces),
    }
    if cfg.pact:
        cleaned, diags = _pact_clean(w0m, tm, cfg, key)
        rec["E_in_after"] = {t: energy_share(cleaned[i], spaces.v0) for i, t in enumerate(tasks)}
        rec["Inf_after"] = interference_matrix(spaces, cleaned)
        rec["removed_share"] = {
            t: 1.0 - float(cleaned[i].square().sum()) / max(float(spaces.taus[i].square().sum()), 1e-300)
            for i, t in enumerate(tasks)
        }
        rec["pact"] = {t: _jsonable(d) for t, d in zip(tasks, diags)}
    return rec


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


def analyze_states(
    pretrained: Mapping[str, Tensor], finetuned: Mapping[str, Mapping[str, Tensor]], cfg: LBWConfig | None = None
) -> dict[str, Any]:
    """LBW diagnostics of ``finetuned`` (task -> state dict) against ``pretrained``; a JSON-able dict
    with ``tasks``, ``config``, ``keys`` (per-key records), ``intrusion`` (``by_task``,
    ``by_layer``, ``by_component``: ``{"before", "after"}`` per task), ``similarity`` and
    ``interference`` (``all`` / ``most_affected`` T×T means) and ``most_affected_keys``."""
    cfg = cfg or LBWConfig()
    if not finetuned:
        raise ConfigError("the analysis needs at least one fine-tuned model")
    check_compatible(pretrained, finetuned)
    tasks = list(finetuned)
    keys = _matrix_keys(pretrained, cfg)
    if not keys:
        raise ConfigError("the encoder has no matrix keys to analyse (all excluded, or a model of vectors only)")
    device = resolve_device(cfg.device)
    records: dict[str, dict[str, Any]] = {}
    for key in keys:
        w0 = pretrained[key].to(device)
        if not bool(w0.detach().abs().sum() > 0):
            log.warning("%s: pre-trained weight is zero; skipped (the core V0 is undefined)", key)
            continue
        taus = [finetuned[t][key].detach().to(device, torch.float64) - w0.detach().to(torch.float64) for t in tasks]
        rec = analyze_key(w0, taus, tasks, cfg, key)
        rec.update(layer=block_of(key), component=component_of(key))
        records[key] = rec
    return summarize(records, tasks, cfg)


def _off_diagonal_mean(m: list[list[float]]) -> float:
    n = len(m)
    vals = [m[i][j] for i in range(n) for j in range(n) if i != j]
    return _mean(vals)


def summarize(records: Mapping[str, Mapping[str, Any]], tasks: list[str], cfg: LBWConfig) -> dict[str, Any]:
    """Aggregate per-key records (see ``analyze_key``) into the report of ``analyze_states``."""
    phases = ("before", "after") if cfg.pact else ("before",)

    def intrusion(group: list[str]) -> dict[str, dict[str, float]]:
        return {t: {p: _mean([records[k][f"E_in_{p}"][t] for k in group]) for p in phases} for t in tasks}

    keys = list(records)
    by_layer: dict[str, list[str]] = {}
    by_comp: dict[str, list[str]] = {}
    for k in keys:
        by_layer.setdefault(records[k]["layer"], []).append(k)
        by_comp.setdefault(records[k]["component"], []).append(k)
    layer_order = sorted(by_layer, key=lambda s: (s == "other", int(s) if s.isdigit() else 0))

    def score(k: str) -> float:
        if len(tasks) > 1:
            return _off_diagonal_mean(records[k]["Inf_before"])
        return _mean(list(records[k]["E_in_before"].values()))

    n_top = max(1, math.ceil(cfg.top_fraction * len(keys))) if keys else 0
    top = sorted(keys, key=score, reverse=True)[:n_top]

    def views(field_name: str) -> dict[str, list[list[float]]]:
        return {
            "all": _mean_matrix([records[k][field_name] for k in keys]),
            "most_affected": _mean_matrix([records[k][field_name] for k in top]),
        }

    return {
        "tasks": tasks,
        "config": asdict(cfg),
        "n_matrix_keys": len(keys),
        "intrusion": {
            "by_task": intrusion(keys),
            "by_layer": {layer: intrusion(by_layer[layer]) for layer in layer_order},
            "by_component": {c: intrusion(by_comp[c]) for c in COMPONENTS if c in by_comp},
        },
        "similarity": views("Sim"),
        "interference": {p: views(f"Inf_{p}") for p in phases},
        "most_affected_keys": top,
        "keys": dict(records),
    }
