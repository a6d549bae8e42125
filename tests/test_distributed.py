"""Scale-out with torch.distributed: work splitting, the gathered contrastive loss under DDP (2 gloo
processes), and `torchrun -m mmsearch index` with 2 ranks: a killed rank, resume, same index as 1 process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsearch.dist.env import DistEnv, DistributedError
from mmsearch.dist.runner import num_slices_for
from mmsearch.ranges import even_ranges, slices_of_rank

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ splitting work
@pytest.mark.parametrize("n,parts", [(10, 3), (3, 3), (0, 2), (1000, 7)])
def test_even_ranges_cover_the_listing_once_in_order(n, parts):
    ranges = even_ranges(n, parts)
    assert len(ranges) == parts
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_every_slice_has_exactly_one_rank():
    owners = sorted(s for r in range(3) for s in slices_of_rank(10, r, 3))
    assert owners == list(range(10))
    assert slices_of_rank(10, 1, 3) == [1, 4, 7]


def test_shard_count_is_independent_of_world_size_for_big_catalogs():
    assert num_slices_for(100_000, 2, 10_000) == num_slices_for(100_000, 8, 10_000) == 10
    assert num_slices_for(12, 2, 10_000) == 2  # small catalogs: still one slice per rank
    assert num_slices_for(1, 4, 10_000) == 1


def test_torchrun_environment_is_read_and_checked():
    env = DistEnv.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main) == (1, 2, 1, True, False)
    assert not DistEnv.from_env({}).is_distributed
    with pytest.raises(DistributedError, match="RANK=2 does not fit WORLD_SIZE=2"):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(DistributedError, match="not an integer"):
        DistEnv.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(DistributedError, match="MASTER_ADDR"):
        DistEnv.from_env({"RANK": "0", "WORLD_SIZE": "2"})


# ------------------------------------------------------------------------------- gathered loss + DDP
class TwoTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(16, 8)
        self.text = torch.nn.Linear(12, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x_img, x_txt):
        norm = torch.nn.functional.normalize
        return norm(self.image(x_img), dim=-1), norm(self.text(x_txt), dim=-1), self.logit_scale


def global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=g), torch.randn(8, 12, generator=g)


def reference_clip_loss(img, txt, logit_scale):
    """Single-process CLIP loss on the whole batch, written independently of mmsearch."""
    logits = logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(img))
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, labels) + ce(logits.T, labels)) / 2


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, uneven: bool = False) -> None:
    """One DDP step of TwoTower with the gathered loss(es); saves this rank's loss and gradients.

    uneven: a 5-row global batch split 3 + 2, with the composed loss too (two rows share a target).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mmsearch.train.loss import composed_loss as gathered_composed_loss
    from mmsearch.train.loss import contrastive_loss as gathered_contrastive_loss

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(TwoTower())
        x_img, x_txt = global_batch()
        if not uneven:
            part = slice(rank * 4, rank * 4 + 4)  # this rank's half of the global batch
            img, txt, scale = model(x_img[part], x_txt[part])
            loss = gathered_contrastive_loss(img, txt, scale.exp())
        else:
            sizes = [b - a for a, b in even_ranges(5, world)]
            part = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
            img, txt, scale = model(x_img[:5][part], x_txt[:5][part])
            loss = gathered_contrastive_loss(img, txt, scale.exp(), sizes) \
                + gathered_composed_loss(txt, img, scale.exp(), torch.tensor([0, 1, 1, 2, 3]), sizes)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in model.module.named_parameters()}},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_step_with_gathered_loss_equals_single_process_step(tmp_path):
    # fork: the children start with torch already imported (spawning costs seconds of imports each)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                                          start_method="fork")
    torch.manual_seed(0)
    model = TwoTower()
    loss = reference_clip_loss(*model(*global_batch()))
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # the mean of the ranks' local losses is the global loss
    assert float(sum(r["loss"] for r in ranks) / 2) == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
        for r in ranks:  # DDP leaves the same averaged gradient on every rank
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6)


def test_uneven_global_batch_with_both_gathered_losses_equals_single_process(tmp_path):
    from mmsearch.train.loss import composed_loss, contrastive_loss

    torch.multiprocessing.start_processes(_ddp_worker, args=(2, free_port(), str(tmp_path), True), nprocs=2,
                                          join=True, start_method="fork")
    torch.manual_seed(0)
    model = TwoTower()
    x_img, x_txt = global_batch()
    img, txt, scale = model(x_img[:5], x_txt[:5])
    # rows 1 and 2 share a target: masked out of each other's denominators, as in one process
    loss = reference_clip_loss(img, txt, scale) + composed_loss(txt, img, scale.exp(), torch.tensor([0, 1, 1, 2, 3]))
    assert contrastive_loss(img, txt, scale.exp()).item() == pytest.approx(reference_clip_loss(img, txt, scale).item())
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert float(sum(r["loss"] for r in ranks) / 2) == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- torchrun train job
@pytest.mark.slow
def test_torchrun_train_step_equals_one_process_and_its_checkpoint_resumes_in_one_process(small_catalog, tmp_path,
                                                                                          monkeypatch):
    """2 ranks through `torchrun -m mmsearch train` take the same steps as one process on the same global
    batches (uneven ones included, all three loss terms on), and the run resumes in one process."""
    import json

    from mmsearch.config import TrainCfg
    from mmsearch.train.loop import train

    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["category"] = "a" if i % 3 else "b"
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [r["image"] for r in rows]
    trip = small_catalog / "triplets.jsonl"  # 5 triplets, two with the same target
    trip.write_text("".join(json.dumps({"reference": ids[i], "text": f"edit {i}", "target": ids[(i * 5) % 11 + 1]})
                            + "\n" for i in (0, 2, 4, 6, 8)))
    # 12 pairs in global batches of 5, 5, 2: ranks take 3 + 2, 3 + 2, 1 + 1 rows
    cfg = TrainCfg(epochs=1, batch_size=5, lr=1e-2, warmup_frac=0.0)
    flags = ["--epochs", "1", "--batch-size", "5", "--lr", "0.01", "--config", str(tmp_path / "cfg.json")]
    (tmp_path / "cfg.json").write_text(cfg.to_json())

    dist_cache = tmp_path / "cache-dist"  # a fresh cache: the ranks split the feature extraction
    res = torchrun(["-m", "mmsearch", "train", str(small_catalog), "--model", "tiny", "--out", str(tmp_path / "dist"),
                    "--composed", str(trip), "--device", "cpu", *flags], env={"MMSEARCH_CACHE": str(dist_cache)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("Trained 1 epoch(s) on 12 pairs and 5 triplets") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (dist_cache / "features").iterdir())[0].startswith("image-")
    assert not list((dist_cache / "features").glob("*.tmp*"))

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-single"))

    def run(out, epochs, resume=False):
        return train(small_catalog, out=tmp_path / out, model="tiny", cfg=TrainCfg(**{**cfg.__dict__, "epochs": epochs}),
                     composed=trip, device="cpu", resume=resume, progress=False)

    single = run("single", 1)
    dist_metrics = [json.loads(x) for x in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert dist_metrics[0]["world_size"] == 2 and single.metrics[0]["world_size"] == 1
    for key in ("loss", "contrastive", "composed", "classify"):
        assert dist_metrics[0][key] == pytest.approx(single.metrics[0][key], rel=1e-4), key

    def weights(out):
        return torch.load(tmp_path / out / "last.pt", weights_only=True)["state_dict"]

    def assert_same(a, b):
        assert a.keys() == b.keys()
        moved = 0
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
            moved += int("head" in k and not torch.equal(a[k], fresh[k]))
        assert moved >= 2  # the heads trained (the comparison is not between two untouched models)

    from mmsearch.models.factory import build_named_model

    fresh = {k: v for k, v in build_named_model("tiny", with_weights=False)[0].state_dict().items()}
    assert_same(weights("dist"), weights("single"))
    # The 2-rank run's state resumes in one process, exactly where the 1-process run resumes.
    run("single", 2, resume=True)
    resumed = run("dist", 2, resume=True)
    assert [m["world_size"] for m in resumed.metrics] == [2, 1]
    assert_same(weights("dist"), weights("single"))
    # Rank 0's refusal (the run exists, no --resume) reaches every rank: a clear error, no hang.
    again = torchrun(["-m", "mmsearch", "train", str(small_catalog), "--model", "tiny", "--out", str(tmp_path / "dist"),
                      "--device", "cpu", *flags], env={"MMSEARCH_CACHE": str(dist_cache)})
    assert again.returncode != 0
    assert again.stderr.count("already holds a run; use --resume") == 2, again.stderr


# ----------------------------------------------------------------------------- torchrun index job
def index_args(catalog: Path, out: Path | str, *extra: str) -> list[str]:
    return ["-m", "mmsearch", "index", str(catalog), "--out", str(out), "--model", "tiny", "--device", "cpu",
            "--workers", "0", *extra]


def torchrun(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """The documented entry point: torchrun --nproc-per-node 2 -m mmsearch ..."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--monitor-interval", "0.1", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)


def torchrun_index(catalog: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return torchrun(index_args(catalog, out, *extra))


def ranks_index(catalog: Path, out: Path | str, *extra: str, env: dict) -> list[subprocess.CompletedProcess]:
    """Two ranks started by hand with torchrun's variables (no launcher that would kill the survivor):
    what each rank itself reports when the other one dies."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, *index_args(catalog, out, *extra)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **env, "OMP_NUM_THREADS": "1", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port}) for r in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_killed_rank_is_reported_then_a_rerun_resumes_and_matches_one_process(small_catalog, sample_catalog,
                                                                             tmp_path):
    from helpers.files import write_tar

    from mmsearch import build_index
    from mmsearch.index.snapshot import channel_vectors, current_snapshot, read_manifest

    (small_catalog / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not an image")
    write_tar(small_catalog / "webdataset" / "000000.tar", {  # sorts last: the end of shard 3
        f"{name}.webp": (sample_catalog / "vehicle" / f"{name}.webp").read_bytes() for name in ("bus", "taxi")}
        | {"bus.json": b'{"title": "city bus", "route": 7}', "taxi.txt": b"yellow cab"})
    out = tmp_path / "dist"
    # 12 images + broken.jpg + 2 tar samples, --shard-size 4 -> 4 shards of 4, 4, 4, 3 (broken.jpg sorts
    # first, into shard 0); shards 0, 2 belong to rank 0 and 1, 3 to rank 1, which dies after shard 1.
    rank0, rank1 = ranks_index(small_catalog, out, "--shard-size", "4",
                               env={"MMSEARCH_CRASH_AT": "shard-done", "MMSEARCH_CRASH_RANK": "1"})
    assert rank1.returncode == -9
    assert rank0.returncode == 1, rank0.stdout + rank0.stderr
    error = rank0.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: rank 1 stopped before finishing its slices (3 of 4 slices done)"), error
    assert "re-run the same command to resume" in error
    assert current_snapshot(out) is None  # no index was published
    assert not (out / "snapshots").exists() or not any((out / "snapshots").iterdir())
    assert len(list((out / ".distributed").glob("*/shard-*.json"))) == 3  # finished shards survive

    resumed = torchrun_index(small_catalog, out, "--shard-size", "4")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Indexed 14 items" in resumed.stdout and "over 2 ranks: 4 slices, 3 resumed" in resumed.stdout
    info = read_manifest(out)["build"]["distributed"]
    assert info["world_size"] == 2 and info["shards"] == 4 and info["resumed_shards"] == 3
    assert [r["encoded"] for r in info["ranks"]] == [0, 3]  # only shard 3's 3 images are encoded now
    assert not (out / ".distributed").exists()  # work files are removed once the index is live

    single = tmp_path / "single"
    build_index(small_catalog, out=single, model="tiny", device="cpu", num_workers=0, progress=False)
    a, b = read_manifest(out), read_manifest(single)
    assert a["count"] == b["count"] == 14
    assert a["skipped"] == b["skipped"] and a["skipped"][0]["id"] == "broken.jpg"
    for name in ("image", "text"):
        dist_vecs, single_vecs = channel_vectors(out, name), channel_vectors(single, name)
        assert sorted(dist_vecs) == sorted(single_vecs)
        for iid, v in single_vecs.items():
            np.testing.assert_allclose(dist_vecs[iid], v, atol=2e-3)


# ------------------------------------------------------------------------------ torchrun into Milvus
def test_a_milvus_lite_file_under_torchrun_is_a_clear_error(tmp_path):
    from mmsearch.dist.runner import build_index_distributed
    from mmsearch.errors import MMSearchError

    env = DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    with pytest.raises(MMSearchError, match="allows one process per file.*milvus-lite server --data-dir"):
        build_index_distributed(tmp_path, out=f"milvus-lite:{tmp_path / 'shop.db'}", env=env, model="tiny")
    assert not (tmp_path / "shop.db").exists()


@pytest.mark.slow
def test_torchrun_index_into_milvus_survives_a_killed_rank_and_matches_one_process(sample_catalog, tmp_path):
    """2 ranks write their rows straight into Milvus (a Milvus Lite server); rank 1 dies after writing its
    first shard: nothing is committed, a re-run repairs and commits, the index answers as a one-process
    build does, and a third run finds everything unchanged."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from helpers.milvus_server import milvus_lite_server

    from mmsearch import SearchEngine, build_index
    from mmsearch.index.milvus import MilvusWriter

    with milvus_lite_server(tmp_path / "shared.db") as server:
        loc, single = f"{server}/dist", f"{server}/single"
        # 60 items, --shard-size 16 -> 4 shards: 0, 2 on rank 0; 1, 3 on rank 1, which dies after shard 1
        rank0, rank1 = ranks_index(sample_catalog, loc, "--shard-size", "16",
                                   env={"MMSEARCH_CRASH_AT": "milvus-shard-written", "MMSEARCH_CRASH_RANK": "1"})
        assert rank1.returncode == -9
        assert rank0.returncode == 1, rank0.stdout + rank0.stderr
        error = rank0.stderr.strip().splitlines()[-1]
        assert "was not committed" in error and "re-run the same command" in error, error
        w = MilvusWriter(loc)
        assert w.manifest is None and w.meta.dirty() == 1  # rows are there, uncommitted
        assert 15 <= len(w.previous()) < 60

        first = torchrun(index_args(sample_catalog, loc, "--shard-size", "16"))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Indexed 60 items" in first.stdout and "every rank wrote its rows into Milvus" in first.stdout
        build_index(sample_catalog, out=single, model="tiny", device="cpu", num_workers=0, progress=False)
        w = MilvusWriter(loc)
        assert w.manifest["generation"] == 1 and w.manifest["count"] == 60 and w.meta.dirty() is None
        assert [r["rank"] for r in w.manifest["build"]["distributed"]["ranks"]] == [0, 1]
        assert sorted(r["fid"] for r in w.previous().values()) == list(range(60))  # no fid twice, none lost
        a, b = SearchEngine.open(loc, device="cpu"), SearchEngine.open(single, device="cpu")
        assert len(a) == len(b) == 60
        for query in (dict(text="red shoes"), dict(text="a yellow fruit", where="category=food"),
                      dict(image=str(sample_catalog / "clothing" / "running_shoe.webp"))):
            ha, hb = a.search(k=10, **query), b.search(k=10, **query)
            assert [h.id for h in ha] == [h.id for h in hb], query
            np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
        assert a.select("category=clothing").tolist() == b.select("category=clothing").tolist()

        again = torchrun(index_args(sample_catalog, loc, "--shard-size", "16"))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "60 unchanged; 0 images encoded" in again.stdout, again.stdout
        assert MilvusWriter(loc).manifest["generation"] == 1  # nothing to commit
