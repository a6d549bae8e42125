"""The fast image pipeline (issue 5): batched preprocessing equals the PIL reference, the fast and device-
decode paths give the reference's embeddings and the same skip reasons, and the CPU fallbacks of the
CUDA-only pieces behave."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch.catalog.images import RawJpeg, load_image, read_device_jpeg
from mmsearch.config import EncodeCfg, ImageTowerCfg
from mmsearch.encode.pipeline import encode_image_files
from mmsearch.errors import MMSearchError
from mmsearch.models.crop import resize_crop_pil
from mmsearch.models.device import default_num_workers, prefetch_to_device
from mmsearch.models.factory import create_model, image_preprocess
from mmsearch.models.preprocess import PilPreprocess, ResizeCropU8, normalize_batch, resize_crop_tensor

ROOT = Path(__file__).resolve().parents[1]
RENDERS = sorted((ROOT / "mmsearch" / "sample" / "catalog").rglob("*.webp"))


def photo(seed: int, size=(1200, 900)) -> Image.Image:
    """A photo-sized RGB image with texture and a render on it (JPEG-realistic content)."""
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(30, 220, size=(5, 7, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    im = Image.fromarray(np.clip(bg + rng.normal(0, 6, (h, w, 1)).astype(np.int16), 0, 255).astype(np.uint8))
    render = Image.open(RENDERS[seed % len(RENDERS)]).convert("RGBA").resize((min(w, h) // 2,) * 2)
    im.paste(render, (w // 4, h // 4), render)
    return im


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Files of every kind the pipeline routes differently, plus two bad ones."""
    d = tmp_path_factory.mktemp("photos")
    photo(1).save(d / "a_landscape.jpg", quality=90)
    photo(2, (700, 1000)).save(d / "b_portrait.jpg", quality=90)
    photo(3).save(d / "c_progressive.jpg", quality=90, progressive=True)
    photo(4).convert("CMYK").save(d / "d_cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: must be turned upright
    photo(5).save(d / "e_rotated.jpg", quality=90, exif=exif)
    photo(6, (640, 480)).convert("L").save(d / "f_grey.jpg", quality=90)
    shutil.copy(RENDERS[0], d / "g_render.webp")
    rgba = Image.open(RENDERS[1]).convert("RGBA").resize((500, 500))
    rgba.save(d / "h_alpha.png")
    good = (d / "a_landscape.jpg").read_bytes()
    (d / "x_truncated.jpg").write_bytes(good[: len(good) // 3])  # header fine, data cut
    (d / "y_not_an_image.jpg").write_text("hello")
    return d


def files(d: Path) -> list[str]:
    return sorted(str(p) for p in d.iterdir())


@pytest.fixture(scope="module")
def tiny():
    model, preprocess, _ = create_model("tiny", device="cpu")
    return model, preprocess


# ---------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size", [(1200, 900), (700, 1000), (256, 256), (300, 257), (100, 60)])
def test_pil_preprocess_equals_torchvision_transforms(size):
    from torchvision import transforms as T

    cfg = ImageTowerCfg()
    tv = T.Compose([T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(cfg.image_size), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    im = photo(7, size)
    ours = PilPreprocess(cfg)(im)
    assert ours.shape == (3, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(ours, tv(im), atol=1e-5, rtol=0)
    torch.testing.assert_close(image_preprocess(cfg)(im), ours)


def test_batched_u8_normalisation_equals_per_image_float():
    cfg = ImageTowerCfg(mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    ims = [photo(s, size) for s, size in ((1, (900, 600)), (2, (500, 800)))]
    u8 = torch.stack([ResizeCropU8(cfg)(im) for im in ims])
    assert u8.dtype == torch.uint8
    batch = normalize_batch(u8, cfg.mean, cfg.std, channels_last=True)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, torch.stack([PilPreprocess(cfg)(im) for im in ims]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(1200, 900), (700, 1000), (256, 256), (100, 60)])
def test_tensor_resize_crop_matches_pil_within_grey_levels(size):
    im = photo(8, size)
    pil = np.asarray(resize_crop_pil(im, 256, 224), dtype=np.float32)
    ten = resize_crop_tensor(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1), 256, 224)
    assert ten.dtype == torch.uint8 and ten.shape == (3, 224, 224)
    diff = np.abs(ten.permute(1, 2, 0).numpy().astype(np.float32) - pil)
    assert diff.mean() < 1.0  # grey levels out of 255: different bicubic kernels, same picture
    assert np.percentile(diff, 99) <= 8


def test_reducing_gap_changes_pixels_only_slightly():
    im = photo(9, (2400, 1800))  # gap 3: box-reduces only beyond a 6x shrink
    exact = np.asarray(resize_crop_pil(im, 256, 224), dtype=np.float32)
    fast = np.asarray(resize_crop_pil(im, 256, 224, reducing_gap=3.0), dtype=np.float32)
    assert 0 < np.abs(exact - fast).mean() < 1.0


# ------------------------------------------------------------------------------------------- routing
def test_device_jpeg_routing(photo_dir):
    routed = {Path(p).name: read_device_jpeg(p) for p in files(photo_dir)}
    for name in ("a_landscape.jpg", "b_portrait.jpg", "f_grey.jpg"):
        assert isinstance(routed[name], RawJpeg)
        assert routed[name].data.numel() == (photo_dir / name).stat().st_size
    # Rotated, CMYK, progressive, non-JPEG and unreadable files go to PIL, which handles or reports them.
    for name in ("c_progressive.jpg", "d_cmyk.jpg", "e_rotated.jpg", "g_render.webp", "h_alpha.png",
                 "y_not_an_image.jpg"):
        assert routed[name] is None, name


# ---------------------------------------------------------------------------------------- end to end
def encode(tiny, paths, **kw):
    model, preprocess = tiny
    return encode_image_files(model, preprocess, paths, progress=False, cfg=EncodeCfg(batch_size=4, **kw))


def test_fast_pipeline_matches_reference_and_skips_the_same_files(tiny, photo_dir):
    paths = files(photo_dir)
    ref = encode(tiny, paths, pipeline="reference", num_workers=0)
    fast = encode(tiny, paths, num_workers=0)
    names = [Path(p).name for p in paths]
    assert [names[i] for i, _ in fast.failed] == ["x_truncated.jpg", "y_not_an_image.jpg"]
    assert fast.failed == ref.failed and fast.ok == ref.ok
    assert "corrupt or truncated" in fast.failed[0][1] and "not a recognised image" in fast.failed[1][1]
    a, b = fast.channels["image"], ref.channels["image"]
    assert a.shape == b.shape == (len(paths) - 2, 64)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() > 0.99, cos  # JPEG draft decode and reducing_gap move pixels slightly
    exact = [k for k, i in enumerate(fast.ok) if not names[i].endswith(".jpg")]  # no draft: same pixels
    assert cos[exact].min() > 0.9999


def test_device_decode_path_on_cpu_matches_pil_and_handles_bad_files(tiny, photo_dir):
    paths = files(photo_dir)
    pil = encode(tiny, paths, decode="pil", draft=0, reducing_gap=None, num_workers=0)
    dev = encode(tiny, paths, decode="device", num_workers=0)
    assert dev.ok == pil.ok and [i for i, _ in dev.failed] == [i for i, _ in pil.failed]
    # the truncated JPEG passes the header check, fails torchvision's decoder, and PIL gives the reason
    assert any("truncated" in reason for _, reason in dev.failed)
    cos = (dev.channels["image"] * pil.channels["image"]).sum(1)
    assert cos.min() > 0.995, cos


def test_worker_processes_give_the_same_embeddings(tiny, photo_dir):
    paths = files(photo_dir)
    one = encode(tiny, paths, num_workers=0)
    two = encode(tiny, paths, num_workers=2)
    assert one.ok == two.ok and one.failed == two.failed
    np.testing.assert_allclose(one.channels["image"], two.channels["image"], atol=1e-5)


def test_reference_pipeline_leaves_model_in_plain_layout_and_fingerprint_unchanged(tiny, photo_dir):
    model, _ = tiny
    before = model.fingerprint()
    encode(tiny, files(photo_dir)[:2], num_workers=0)
    assert model.fingerprint() == before  # channels_last changes the layout, never the values


def test_bad_encode_config_is_a_clear_error():
    with pytest.raises(MMSearchError, match="unknown pipeline"):
        EncodeCfg(pipeline="turbo")
    with pytest.raises(MMSearchError, match="unknown decoder"):
        EncodeCfg(decode="gpu-magic")
    with pytest.raises(MMSearchError, match="batch size"):
        EncodeCfg(batch_size=0)


# ------------------------------------------------------------------------------------ device fallbacks
def test_worker_defaults_follow_the_machine(monkeypatch):
    import mmsearch.models.device as dev

    monkeypatch.setattr(dev, "available_cpus", lambda: 2)
    assert default_num_workers(torch.device("cpu")) == 1
    assert default_num_workers(torch.device("cuda")) == 1
    monkeypatch.setattr(dev, "available_cpus", lambda: 64)
    assert default_num_workers(torch.device("cuda")) == 16
    monkeypatch.setattr(dev, "available_cpus", lambda: 1)
    assert default_num_workers(torch.device("cpu")) == 0


def test_auto_decoder_uses_nvjpeg_only_on_cuda_for_mostly_jpeg_inputs():
    from mmsearch.encode.pipeline import resolve_decode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    jpegs, webps = ["a.jpg", "b.JPEG", "c.jfif"], ["d.webp", "e.png", "f.gif", "g.webp"]
    assert resolve_decode("auto", cuda, jpegs + webps[:3]) == "device"  # 3 of 6: half
    assert resolve_decode("auto", cuda, jpegs + webps) == "pil"  # 3 of 7
    assert resolve_decode("auto", cpu, jpegs) == "pil"
    assert resolve_decode("auto", cuda, []) == "pil"
    assert resolve_decode("pil", cuda, jpegs) == "pil" and resolve_decode("device", cpu, webps) == "device"


def test_device_decoding_reads_in_the_main_process_unless_told_otherwise(monkeypatch):
    import mmsearch.models.device as dev
    from mmsearch.encode.pipeline import loader_workers

    monkeypatch.setattr(dev, "available_cpus", lambda: 16)
    cuda = torch.device("cuda")
    assert loader_workers(None, "device", cuda) == 0
    assert loader_workers(None, "pil", cuda) == 15
    assert loader_workers(4, "device", cuda) == 4
    assert loader_workers(None, "pil", torch.device("cpu")) == 1


def test_prefetch_on_cpu_is_a_plain_map():
    assert list(prefetch_to_device(iter([1, 2, 3]), torch.device("cpu"), lambda x: 10 * x)) == [10, 20, 30]
    assert list(prefetch_to_device(iter([]), torch.device("cpu"), lambda x: x)) == []


def test_load_image_still_decodes_bytes_at_reduced_size():
    buf = io.BytesIO()
    photo(10, (1600, 1200)).save(buf, "JPEG", quality=90)
    small = load_image(buf.getvalue(), draft_size=512)
    assert min(small.size) >= 512 and small.size[0] < 1600
