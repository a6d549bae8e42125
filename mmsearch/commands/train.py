"""``mmsearch train``: train the shared space on a catalog, in one process or under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .options import (
    AugViewsOpt,
    ComposedOpt,
    DeviceOpt,
    EpochsOpt,
    FusionOpt,
    LrOpt,
    ResumeOpt,
    RunDirOpt,
    SeedOpt,
    TrainBatchOpt,
    TrainCatalogArg,
    TrainConfigOpt,
    TrainModelOpt,
    UnfreezeOpt,
    ValComposedOpt,
    ValOpt,
    WiseAlphaOpt,
)
from .output import out


def train(
    catalog: TrainCatalogArg,
    model: TrainModelOpt = "default",
    out_dir: RunDirOpt = Path("runs/train"),
    config: TrainConfigOpt = None,
    epochs: EpochsOpt = None,
    batch_size: TrainBatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    fusion: FusionOpt = None,
    unfreeze: UnfreezeOpt = None,
    aug_views: AugViewsOpt = None,
    wise_alpha: WiseAlphaOpt = None,
    composed: ComposedOpt = None,
    val: ValOpt = None,
    val_composed: ValComposedOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train the shared space (projection heads + fusion) on CATALOG.

    Under torchrun (`torchrun --nproc-per-node N -m mmsearch train ...`) the ranks train one model with
    DistributedDataParallel; --batch-size stays the global batch and rank 0 writes the run folder.
    """
    from ..dist.env import DistEnv
    from ..train.loop import TrainOptions
    from ..train.loop import train as train_model

    overrides: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                                 "fusion": fusion, "unfreeze": unfreeze, "aug_views": aug_views, "wise_alpha": wise_alpha}
    options = TrainOptions.from_config(config, overrides, out=out_dir, model=model, composed=composed, val=val,
                                       val_composed=val_composed, device=device, resume=resume,
                                       progress=sys.stderr.isatty())
    report = train_model(catalog, options=options)
    if not DistEnv.from_env().is_main:  # one summary per job
        return
    best = f", best validation Recall@10 {report.best_metric:.3f} at epoch {report.best_epoch}" \
        if report.best_metric is not None else ""
    out.print(f"[bold green]Trained {report.epochs_run} epoch(s)[/] on {report.pairs} pairs and {report.triplets} "
              f"triplets{best}; model: {report.checkpoint}")
    if report.skipped_no_text or report.skipped_bad_image:
        out.print(f"[yellow]Left out:[/] {report.skipped_no_text} item(s) without text, "
                  f"{report.skipped_bad_image} unreadable image(s)")
