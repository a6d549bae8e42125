"""The built-in model names, without importing torch (a query process that runs the exported towers
checks an index's model against them too)."""

from __future__ import annotations

from importlib import resources


def list_models() -> list[str]:
    """Names of the built-in model configurations."""
    folder = resources.files("mmsearch.models") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def weights_dir():
    """``mmsearch/models/weights/`` inside the package: built-in checkpoints and what the package ships."""
    from pathlib import Path

    return Path(str(resources.files("mmsearch.models") / "weights"))
