"""Peak memory of 20 concurrent first requests for the thumbnail of one huge image (issue 20 item 4).

    python benchmarks/bench_thumb_memory.py --out benchmarks/results/thumb_memory.json

A legal 64 MP (8000 x 8000) 24-bit BMP of 192 MB; ``--requests`` threads ask the server's ThumbnailCache for
its thumbnail at once (what the thumbnail route calls), and, in a second case, for the thumbnails of
``--files`` different such images. Each case runs in a fresh process that reports its peak RSS (VmHWM)
and its RSS once every thumbnail is made (what stays held). ``--before`` runs the old code path instead
(each request decodes on its own: ``load_image`` with JPEG-only draft, no sharing, no bound).
Before the fix the issue measured 7.7 GB peak and 4.6 GB held for 20 requests of one file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, sys, threading
from pathlib import Path
from PIL import Image
before, requests, paths = sys.argv[1] == "before", int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
start = rss("VmRSS")
if before:
    from mmsearch.catalog.images import load_image
    def one(path):
        im = load_image(path, draft_size=512)
        im.thumbnail((256, 256), Image.Resampling.LANCZOS)
        buf = io.BytesIO(); im.save(buf, format="WEBP", quality=80, method=4)
        return buf.getvalue()
else:
    from mmsearch.server.files import ThumbnailCache
    cache = ThumbnailCache(256, workers=2)
    one = lambda path: cache.get(path)[0]
out = []
threads = [threading.Thread(target=lambda p=paths[i % len(paths)]: out.append(len(one(p)))) for i in range(requests)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"thumbnails": len(out), "start_rss_mb": round(start, 1), "peak_rss_mb": round(rss("VmHWM"), 1),
                  "held_rss_mb": round(rss("VmRSS"), 1),
                  "decodes": len(out) if before else cache.misses}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--files", type=int, default=4, help="different huge images in the second case")
    ap.add_argument("--before", action="store_true", help="measure the old code path (needs ~8 GB free)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="mmsearch-thumbmem-"))
    paths = []
    for n in range(args.files):
        paths.append(work / f"huge{n}.bmp")
        Image.new("RGB", (8000, 8000), (40 * n, 90, 200)).save(paths[-1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    for case, files in (("one file", paths[:1]), (f"{args.files} files", paths)):
        for mode in (["before"] if args.before else []) + ["after"]:
            r = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.requests), *map(str, files)],
                               env=env, capture_output=True, text=True, check=True)
            rows.append({"case": case, "code": mode, "requests": args.requests, **json.loads(r.stdout)})
            print(rows[-1], flush=True)
    for p in paths:
        p.unlink()
    work.rmdir()
    result = {"image": "8000 x 8000 24-bit BMP, 192 MB", "rows": rows, "thumbnail_workers": 2,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "python": platform.python_version()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        md = ["# Thumbnail memory: concurrent first requests for 64 MP images (bench_thumb_memory.py)", "",
              f"`python benchmarks/bench_thumb_memory.py {' '.join(sys.argv[1:])}` on {result['machine']}. "
              "Fresh process per row; RSS from /proc (VmHWM = peak, VmRSS once all thumbnails are made).", "",
              "| case | code | requests | decodes | peak RSS MB | held after MB | start MB |", "|---|---|---:|---:|---:|---:|---:|"]
        md += [f"| {r['case']} | {r['code']} | {r['requests']} | {r['decodes']} | {r['peak_rss_mb']} | {r['held_rss_mb']} | "
               f"{r['start_rss_mb']} |" for r in rows]
        md += ["", "Issue 20 measured the old code at 7.7 GB peak and 4.6 GB held (20 requests, one 64 MP BMP)."]
        args.out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
