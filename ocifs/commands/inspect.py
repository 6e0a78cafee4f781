"""``ocifs inspect``: what an artifact holds, from its manifest alone (no chunk is fetched)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from ocifs.format.model import ChunkedFile
from ocifs.reference import parse_reference
from ocifs.registry.client import ClientOptions
from ocifs.registry.connect import connect
from ocifs.registry.resolve import Resolved, resolve


def describe(resolved: Resolved) -> dict[str, Any]:
    """The machine-readable description ``--json`` prints."""
    artifact = resolved.artifact
    files = []
    for f in artifact.files:
        if isinstance(f, ChunkedFile):
            files.append(
                {
                    "path": f.path,
                    "size": f.size,
                    "kind": "chunked",
                    "chunks": len(f.chunks),
                    "digest": str(f.file_digest) if f.file_digest else None,
                    "index": str(f.index.digest),
                }
            )
        else:
            files.append(
                {
                    "path": f.path,
                    "size": f.size,
                    "kind": "plain",
                    "chunks": 1,
                    "digest": str(f.digest),
                    "mediaType": f.media_type,
                }
            )
    return {
        "reference": str(resolved.reference),
        "digest": str(resolved.reference.digest),
        "mediaType": artifact.media_type,
        "manifests": max(len(artifact.slices), 1),
        "slices": [str(d.digest) for d in artifact.slices],
        "artifactType": artifact.artifact_type,
        "annotations": dict(artifact.annotations),
        "files": files,
        "skippedLayers": [str(d.digest) for d in artifact.skipped],
        "totalSize": artifact.total_size,
    }


def render(desc: dict[str, Any]) -> str:
    """A human table: one line per file and a total."""
    lines = [f"{desc['reference']}", f"artifactType: {desc['artifactType'] or '-'}"]
    if desc["manifests"] > 1:
        lines.append(f"manifests: {desc['manifests']} (an image index of slices, docs/spec.md §14)")
    width = max([len(f["path"]) for f in desc["files"]] + [4])
    lines.append(f"{'PATH':<{width}}  {'SIZE':>14}  {'KIND':<7}  {'CHUNKS':>6}  DIGEST")
    for f in desc["files"]:
        digest = f["digest"] or "(not recorded)"
        lines.append(f"{f['path']:<{width}}  {f['size']:>14,}  {f['kind']:<7}  {f['chunks']:>6}  {digest}")
    lines.append(f"{len(desc['files'])} file(s), {desc['totalSize']:,} bytes")
    if desc["skippedLayers"]:
        lines.append(f"{len(desc['skippedLayers'])} layer(s) without a title ignored")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace, options: ClientOptions) -> int:
    ref = parse_reference(args.reference)

    async def go() -> Resolved:
        async with connect(ref.registry, options, repository=ref.repository) as client:
            return await resolve(client, ref)

    desc = describe(trio.run(go))
    if args.json:
        json.dump(desc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(desc))
    return 0
