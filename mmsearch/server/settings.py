"""ServeCfg: everything ``mmsearch serve`` can be told, as one dataclass (loadable from a JSON file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import from_dict, to_dict


@dataclass
class ServeCfg:
    """Server settings. Limits bound memory and CPU per request and in total.

    max_upload_bytes: request bodies above this are answered 413 before they are read.
    max_image_pixels: uploaded images with more pixels (width x height, read from the header before any
        decoding) are rejected as decompression bombs.
    max_terms: query terms one request may have (texts and photos, "not" terms included; a "more like
        this" item counts as one); more get 413 naming this limit.
    max_request_pixels: pixels (width x height from the headers) of all the photos of one request together;
        more get 413 naming this limit. With ``max_terms`` it bounds the decode and model work of a request.
    model_workers: model jobs (encode + rank) that run at once; on a CPU one job already uses every core.
    max_pending: model jobs admitted at once (running + waiting); beyond that a request gets 503 with
        ``Retry-After: retry_after_s``, so a burst cannot pile up uploads in memory.
    read_timeout_s: a request's headers and body must arrive within this many seconds of the connection
        opening (or of the previous response on a keep-alive connection); slower ones are closed.
    thumbnail_workers: thumbnails decoded at once (each holds at most one decoded image: a 64 MP BMP is
        192 MB); concurrent requests for one file share its decode, and the rest wait without a thread.
    reload_interval_s: how often to look for a rebuilt index (reading the CURRENT file); 0 disables it,
        leaving ``POST /reload``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 1000
    max_terms: int = 16
    max_request_pixels: int = 80_000_000
    max_k: int = 100
    model_workers: int = 1
    max_pending: int = 32
    retry_after_s: int = 1
    reload_interval_s: float = 2.0
    read_timeout_s: float = 30.0
    thumbnail_size: int = 256
    thumbnail_cache_bytes: int = 64 * 1024 * 1024
    thumbnail_workers: int = 2
    latency_window: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_image_pixels", "max_text_chars", "max_k", "model_workers",
                     "max_pending", "thumbnail_size", "max_terms", "max_request_pixels",
                     "thumbnail_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ServeCfg":
        return from_dict(cls, json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self) -> str:
        data = to_dict(self)
        data["api_key"] = None if self.api_key is None else "***"  # never write a secret back out
        return json.dumps(data, indent=2)
