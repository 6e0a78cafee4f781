"""How ``ocifs push`` lays an artifact out, decided before any request: the registry's layer
budget (flag, config, or a known default for registries that cap layers), the chunk size, and
one manifest or several (docs/spec.md §7.1, §14). Every refusal here is one line before a
byte is sent, so a registry never holds chunks of a manifest it would refuse.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ocifs.commands.push_sources import SourceFile
from ocifs.errors import OcifsError, UsageError
from ocifs.format.build import is_chunked
from ocifs.format.media import (
    DEFAULT_LAYER_BUDGET,
    MAX_CHUNK_SIZE,
    MAX_LAYERS,
)
from ocifs.format.plan import Layout, plan_chunk_size, plan_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KnownLimit:
    """A layer cap of a registry recognisable by its host name, with the evidence for it."""

    host: re.Pattern[str]
    max_layers: int
    registry: str


# Amazon ECR documents no layers-per-image quota ("Amazon ECR service quotas",
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/service-quotas.html), yet refuses larger
# manifests with "Limit on number of layers per image exceeded": users measured 500
# (github.com/spinframework/spin/issues/1787, github.com/nuonco/nuon/pull/2348) and one hit it with
# ~300 layers (github.com/openai/tart/issues/890). 250 stays below every report.
KNOWN_LIMITS = (
    KnownLimit(
        re.compile(r"[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?(:[0-9]+)?", re.IGNORECASE),
        250,
        "Amazon ECR",
    ),
)


def known_limit(host: str) -> KnownLimit | None:
    """The known layer cap of the registry at ``host`` (``name[:port]``), if it has one."""
    return next((limit for limit in KNOWN_LIMITS if limit.host.fullmatch(host)), None)


@dataclass(frozen=True, slots=True)
class LayerBudget:
    layers: int
    source: str  # where the number came from, for messages


def layer_budget(host: str, flag: int | None, configured: int | None) -> LayerBudget:
    """The layer budget of a push to ``host``: ``--max-layers``, else the registry's
    ``max_layers`` in config.toml, else a known cap (:data:`KNOWN_LIMITS`), else 10,000.
    UsageError if it is above what an ocifs reader accepts."""
    if flag is not None:
        budget = LayerBudget(flag, "--max-layers")
    elif configured is not None:
        budget = LayerBudget(configured, f'max_layers of [registry."{host}"] in config.toml')
    elif (known := known_limit(host)) is not None:
        budget = LayerBudget(known.max_layers, f"the default for {known.registry}")
    else:
        budget = LayerBudget(DEFAULT_LAYER_BUDGET, "the default")
    if not 1 <= budget.layers <= MAX_LAYERS:
        raise UsageError(
            f"layer budget {budget.layers} ({budget.source}) is outside 1..{MAX_LAYERS}",
            hint=f"ocifs readers refuse manifests of more than {MAX_LAYERS} layers",
        )
    return budget


def _check_sizes(chunk_size: int, max_layers: int) -> None:
    """The chunk size and layer budget a user may ask for (readers' limits, docs/spec.md §7)."""
    if chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1 byte")
    if chunk_size > MAX_CHUNK_SIZE:
        raise UsageError(
            f"--chunk-size {chunk_size} is above the largest chunk, {MAX_CHUNK_SIZE} bytes (1G)",
            hint="readers bound their buffers by it",
        )
    if not 1 <= max_layers <= MAX_LAYERS:
        raise UsageError(f"--max-layers {max_layers} is outside 1..{MAX_LAYERS}, what ocifs readers accept")


def _refusal(exc: OcifsError, *, pinned: bool, budget_source: str, split: bool) -> UsageError:
    """The one line for an artifact that cannot be laid out, before anything is sent."""
    source = f" ({budget_source})" if budget_source else ""
    remedy = "leave --chunk-size out (push grows it to fit) or give a larger one" if pinned else "push fewer files"
    also = "" if split else " (without --single-manifest, push lays the artifact out over several manifests)"
    return UsageError(
        f"refused before upload: {exc.message}{source}",
        hint=f"raise --max-layers (or max_layers in config.toml) if the registry allows more layers, or {remedy}"
        + also,
    )


def choose_chunk_size(
    files: list[SourceFile], chunk_size: int, max_layers: int, *, pinned: bool = False, budget_source: str = ""
) -> int:
    """The requested chunk size, doubled until the manifest fits the layer budget and 4 MiB
    (kept as it is when ``pinned``). UsageError, before anything is sent, when it cannot fit."""
    _check_sizes(chunk_size, max_layers)
    try:
        return plan_chunk_size(
            [(f.path, f.size) for f in files], chunk_size=chunk_size, layer_budget=max_layers, grow=not pinned
        )
    except OcifsError as exc:
        raise _refusal(exc, pinned=pinned, budget_source=budget_source, split=False) from None


def choose_layout(
    files: list[SourceFile],
    chunk_size: int,
    max_layers: int,
    *,
    pinned: bool = False,
    budget_source: str = "",
    split: bool = True,
) -> Layout:
    """The chunk size and manifest count of a push: one manifest when it fits (the chunk size
    grown up to 64 MiB unless ``pinned``), else the split layout of docs/spec.md §14. With
    ``split=False`` exactly :func:`choose_chunk_size` (grown up to 1 GiB, else refused). UsageError,
    before anything is sent, when even several manifests cannot hold the files."""
    if not split:
        return Layout(choose_chunk_size(files, chunk_size, max_layers, pinned=pinned, budget_source=budget_source), 1)
    _check_sizes(chunk_size, max_layers)
    try:
        return plan_layout(
            [(f.path, f.size) for f in files], chunk_size=chunk_size, layer_budget=max_layers, grow=not pinned
        )
    except OcifsError as exc:
        raise _refusal(exc, pinned=pinned, budget_source=budget_source, split=True) from None


def count_chunks(files: list[SourceFile], chunk_size: int) -> int:
    """Blobs the push will send for file content: one per chunk, one per plain file."""
    return sum(-(-f.size // chunk_size) if is_chunked(f.size, chunk_size) else 1 for f in files)
