"""``mmsearch info --check``: verify an index against its manifest's checksums, name what is damaged and
say how to repair it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MMSearchError
from ..fsutil import sha256_file
from .snapshot import read_manifest


@dataclass
class IndexCheck:
    snapshot: Path
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (file name, what is wrong)
    intact_previous: Path | None = None  # another snapshot of the folder that verifies
    repair: str = ""

    @property
    def ok(self) -> bool:
        return not self.damaged


SQLITE_TRANSIENT = ("-journal", "-wal", "-shm")  # SQLite's own side files, not part of the snapshot


def damaged_files(snap: Path, manifest: dict) -> list[tuple[str, str]]:
    """Files that fail their checksum, and files the manifest's list does not vouch for: the list is
    checked against the files present and the files the manifest uses, so editing it cannot hide one."""
    listed = manifest["files"]
    out = []
    for name, digest in sorted(listed.items()):
        path = snap / name
        if not path.is_file():
            out.append((name, "missing"))
        elif sha256_file(path) != digest:
            out.append((name, "checksum mismatch (damaged or changed after the build)"))
    present = sorted(p.name for p in snap.iterdir() if p.is_file()) if snap.is_dir() else []
    for name in present:
        if name != "manifest.json" and name not in listed and not name.endswith(SQLITE_TRANSIENT):
            out.append((name, "not in the manifest's checksums (added after the build, or the manifest was edited)"))
    used = {"items.sqlite"} | {str(ch[key]) for ch in manifest["channels"].values() if isinstance(ch, dict)
                               for key in ("faiss", "embeddings", "ids", "ivfdata") if ch.get(key)}
    ref = str(manifest["model"].get("ref", ""))
    if ref and "/" not in ref and (snap / ref).is_file():
        used.add(ref)  # a fine-tuned checkpoint copied into the snapshot
    for name in sorted(n for n in used - set(listed) - set(present) if "/" not in n):
        out.append((name, "used by the index but neither present nor in the manifest's checksums "
                          "(was the manifest edited?)"))
    return out


def check_index(index: str | Path) -> IndexCheck:
    """Every file of the live snapshot of ``index`` against the manifest's SHA-256; raises MMSearchError
    (one line, with the repair) when the manifest itself cannot be read."""
    manifest = read_manifest(index)
    snap = Path(manifest["_snapshot"])
    result = IndexCheck(snapshot=snap, damaged=damaged_files(snap, manifest))
    if result.ok:
        return result
    folder = snap.parent.parent if snap.parent.name == "snapshots" else None
    if folder is not None:
        for other in sorted(snap.parent.iterdir(), reverse=True):
            if other == snap or other.name.startswith(".") or not other.is_dir():
                continue
            try:
                if not damaged_files(other, read_manifest(other)):
                    result.intact_previous = other
                    break
            except (MMSearchError, OSError):
                continue
    catalog = manifest.get("catalog") or "CATALOG"
    result.repair = f"rebuild it: mmsearch index {catalog} --out {folder or snap} --rebuild"
    if result.intact_previous is not None:
        result.repair += (f" (or, to serve the previous snapshot meanwhile, write {result.intact_previous.name} "
                          f"into {folder}/CURRENT)")
    return result
