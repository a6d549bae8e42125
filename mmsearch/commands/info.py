"""``mmsearch info``: what an index's manifest says, after checking its files against their checksums."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import MMSearchError
from .options import CheckOpt, IndexOpt, ManifestJsonOpt
from .output import err, out


def info(index: IndexOpt = Path("index"), as_json: ManifestJsonOpt = False, check: CheckOpt = True) -> None:
    """Show what an index's manifest says, after checking its files against their checksums."""
    from ..index.backend import is_milvus, open_reader
    from ..index.check import check_index
    from ..index.snapshot import read_manifest

    if is_milvus(index):  # Milvus keeps its own checksums: the manifest and the collection's counts
        return milvus_info(open_reader(index), as_json)
    m = read_manifest(index)
    result = check_index(index) if check else None
    if result is not None and not result.ok:
        for name, what in result.damaged:
            err.print(f"[bold red]Damaged:[/] {result.snapshot / name}: {what}", highlight=False)
        raise MMSearchError(f"index {index} is damaged ({len(result.damaged)} file(s)); {result.repair}")
    if as_json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return
    lines = []
    for name, ch in m["channels"].items():
        spec = ch.get("spec", {})
        params = ", ".join(f"{k}={v}" for k, v in spec.get("params", {}).items())
        recall = f", Recall@10 {spec['recall_at_10']:.3f}" if spec.get("recall_at_10") is not None else ""
        lists = f", inverted lists on disk in {ch['ivfdata']}" if ch.get("ivfdata") else ""
        lines.append(f"{name}: {ch['count']} x {ch['dim']} ({spec.get('factory', ch['index'])}"
                     f"{', ' + params if params else ''}{recall}{lists})")
    summary(m, str(m["_snapshot"]), lines)
    out.print(f"  checksums   {'all ' + str(len(m['files'])) + ' files intact' if result else 'not checked'}")


def milvus_info(reader: Any, as_json: bool) -> None:
    """``info`` of a Milvus index: the manifest it stores beside its collection (index/milvus/meta.py)."""
    m = reader.manifest
    reader.close()
    if as_json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return
    lines = []
    for name, ch in m["channels"].items():
        idx = ch.get("milvus_index", {})
        params = ", ".join(f"{k}={v}" for k, v in idx.get("params", {}).items())
        lines.append(f"{name}: {ch['count']} x {ch['dim']} (Milvus {idx.get('index_type', '?')}"
                     f"{', ' + params if params else ''})")
    summary(m, f"{reader.location} (generation {m.get('generation')})", lines)


def summary(m: dict[str, Any], title: str, channels: list[str]) -> None:
    """What every index's manifest says: items, model, metric, one line per channel, when and from what."""
    out.print(f"[bold]{title}[/]", highlight=False)
    out.print(f"  items       {m['count']} ({len(m.get('skipped', []))} skipped)")
    out.print(f"  model       {m['model']['name']} ({m['model']['ref']}, fingerprint {m['model']['fingerprint']}, "
              f"fusion {m['model']['fusion']})")
    out.print(f"  metric      {m['metric']}, dim {m['dim']}")
    for line in channels:
        out.print(f"  channel     {line}", highlight=False)
    out.print(f"  created     {m['created']} by mmsearch {m['mmsearch_version']}")
    out.print(f"  catalog     {m['catalog']}")
