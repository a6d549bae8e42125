"""``mmsearch index``: build or update an index, in one process, under torchrun, or with ``--watch``; and
``query --update``."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, Optional

from .options import (
    CatalogArg,
    CompileOpt,
    DebounceOpt,
    DeviceOpt,
    ExcludeOpt,
    IndexBatchOpt,
    IndexModelOpt,
    IndexOutOpt,
    IndexTypeOpt,
    MaxMemoryOpt,
    RebuildOpt,
    ResetExcludeOpt,
    ShardSizeOpt,
    WaitOpt,
    WatchOpt,
    WorkersOpt,
)
from .output import out


def index(
    catalog: CatalogArg,
    out_dir: IndexOutOpt = Path("index"),
    model: IndexModelOpt = None,
    batch_size: IndexBatchOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    compile_model: CompileOpt = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    rebuild: RebuildOpt = False,
    wait: WaitOpt = 0.0,
    shard_size: ShardSizeOpt = 10_000,
    exclude: ExcludeOpt = None,
    reset_exclude: ResetExcludeOpt = False,
    watch: WatchOpt = False,
    debounce: DebounceOpt = 2.0,
) -> None:
    """Index CATALOG, or update an existing index: only new and changed files are encoded.

    Under torchrun (`torchrun --nproc-per-node N -m mmsearch index ...`) the ranks share the encoding
    and rank 0 writes the one index.
    """
    from ..config import EncodeCfg
    from ..index.build import build_index, index_model
    from ..index.options import BuildOptions

    opts = BuildOptions(model=model, device=device, batch_size=batch_size, num_workers=workers,
                        progress=sys.stderr.isatty(), encode=EncodeCfg(compile=compile_model),
                        index=index_cfg(index_type, max_memory), rebuild=rebuild, lock_timeout=wait,
                        exclude=exclude, reset_exclude=reset_exclude, shard_size=shard_size)
    # torch (dist.env) only under torchrun: a plain update that finds nothing to do never imports it
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1") and _dist_env().is_distributed:
        from ..index.backend import is_milvus  # a Milvus update takes the model its manifest names

        keep = model or (None if is_milvus(out_dir) else index_model(out_dir))
        return index_distributed(catalog, out_dir, opts.replace(model=keep))
    if watch:
        if rebuild or reset_exclude:  # once, before watching; the watcher's updates are plain updates
            print_build_report(build_index(catalog, out=out_dir, options=opts))
        return watch_catalog(catalog, out_dir, debounce, opts.replace(rebuild=False, reset_exclude=False))
    print_build_report(build_index(catalog, out=out_dir, options=opts))


def index_cfg(index_type: Optional[str], max_memory: Optional[str]) -> Any:
    """--index-type and --max-memory -> IndexCfg, or None to keep the existing index's configuration."""
    from ..index.options import IndexCfg, parse_memory

    if index_type is None and max_memory is None:
        return None
    return IndexCfg(index_type=index_type or "auto", max_memory=parse_memory(max_memory))


def _dist_env() -> Any:
    from ..dist.env import DistEnv

    return DistEnv.from_env()


def print_build_report(report: Any) -> None:
    """The summary of one index run: counts, remembered exclusions, skipped files."""
    out.print(f"[bold green]Indexed {report.indexed} items[/] into {report.out} "
              f"({report.with_text} with text) in {report.seconds:.1f} s: {report.added} added, "
              f"{report.updated} updated, {report.metadata_updated} metadata-only, {report.removed} removed, "
              f"{report.unchanged} unchanged; {report.encoded} images encoded"
              + (f" ({report.images_per_s:.1f} images/s)" if report.encoded else ""))
    if getattr(report, "exclude", None):
        out.print(f"Excluding {', '.join(report.exclude)} (remembered in the index)"
                  + (f"; {report.excluded} indexed item(s) they match were removed" if report.excluded else ""),
                  highlight=False, markup=False)
    if report.skipped:
        again = getattr(report, "not_retried", 0)
        out.print(f"[yellow]Skipped {len(report.skipped)} file(s)[/]"
                  + (f" ({again} unchanged since an earlier run failed on them: not decoded again)" if again else "")
                  + ":")
        for s in report.skipped[:20]:
            out.print(f"  {s['id']}: {s['reason']}", highlight=False, markup=False)  # "mmsearch[formats]"
        if len(report.skipped) > 20:
            out.print(f"  ... and {len(report.skipped) - 20} more (see manifest.json)")


def index_distributed(catalog: Path, out_dir: Path, opts: Any) -> None:
    """``index`` on one rank of a torchrun job: rank 0 prints the summary, the others stay quiet."""
    from ..dist.runner import build_index_distributed

    result = build_index_distributed(catalog, out=out_dir, options=opts)
    if result is None:
        return
    info = result.info
    print_build_report(result.report)
    if info.get("backend") == "milvus":
        out.print(f"Distributed over {info['world_size']} ranks: {info['shards']} slices, every rank wrote its rows "
                  f"into Milvus; rank 0 committed in {info['merge_seconds']:.1f} s")
    elif info:
        out.print(f"Distributed over {info['world_size']} ranks: {info['shards']} slices, {info['resumed_shards']} "
                  f"resumed from an earlier run; rank 0 merged them in {info['merge_seconds']:.1f} s")
        for name, ivf in info.get("ivf_ondisk", {}).items():
            out.print(f"  {name}: IVF vectors added by every rank in {ivf['parts']} parts ({ivf['resumed_parts']} "
                      f"resumed), inverted lists merged on disk")


def watch_catalog(catalog: Path, out_dir: Path, debounce: float, opts: Any) -> None:
    """``index --watch``: update now, then after every burst of changes, one summary line each, until Ctrl-C."""
    from ..index.watch import watch

    def report(r: Any) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        out.print(f"{stamp} ", end="", highlight=False)
        print_build_report(r)

    print(f"Watching {catalog} (Ctrl-C to stop); a burst of changes is indexed after {debounce:g} s of quiet",
          file=sys.stderr)
    try:
        watch(catalog, out_dir, debounce=debounce, on_update=report, options=opts)
    except KeyboardInterrupt:
        print("Stopped watching.", file=sys.stderr)


def update_from_catalog(index: Path) -> None:
    """``query --update``: update ``index`` from the catalog folder its manifest records (rclip's behaviour);
    says what changed, and nothing when nothing did."""
    from ..errors import QueryError
    from ..index.backend import is_milvus, open_reader
    from ..index.build import build_index
    from ..index.snapshot import read_manifest

    if is_milvus(index):
        reader = open_reader(index)
        catalog = reader.manifest.get("catalog")
        reader.close()
    else:
        catalog = read_manifest(index).get("catalog")
    if not catalog or not Path(catalog).is_dir():
        raise QueryError(f"--update: index {index} records no catalog folder that exists here ({catalog or 'none'})")
    report = build_index(catalog, out=index, progress=sys.stderr.isatty())
    if report.added or report.updated or report.metadata_updated or report.removed:
        print(f"Updated {index}: {report.added} added, {report.updated} updated, {report.metadata_updated} "
              f"metadata-only, {report.removed} removed", file=sys.stderr)
