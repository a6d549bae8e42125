"""``mmsearch migrate``: copy a folder index into Milvus with its stored embeddings (index/milvus/build.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import MMSearchError
from .options import FromIndexArg, IndexOutOpt, WaitOpt
from .output import out


def migrate(source: FromIndexArg, index: IndexOutOpt = Path("index"), wait: WaitOpt = 0.0) -> None:
    """Copy the folder index SOURCE into a Milvus index (-i milvus-lite:FILE.db or milvus://HOST:PORT/COLLECTION)
    without encoding anything again; later `mmsearch index CATALOG -i ...` runs update it as usual."""
    from ..index.backend import is_milvus

    if not is_milvus(index):
        raise MMSearchError(f"migrate copies a folder index into Milvus: give -i milvus-lite:FILE.db or "
                            f"milvus://HOST:PORT/COLLECTION (got {index})")
    from ..index.milvus.build import copy_folder

    report = copy_folder(source, str(index), lock_timeout=wait)
    out.print(f"[bold green]Copied {report.indexed} items[/] from {source} into {report.out} in "
              f"{report.seconds:.1f} s (nothing re-encoded)")
