"""Image preprocessing, split so the expensive float work happens once per batch on the model's device.

The model sees ``normalize(center_crop(resize_short_side(image, R), S))`` (R = ``resize_size``,
S = ``image_size``, bicubic), or with the config's ``geometry = "pad"`` the whole image, long side
resized to S and centred on a square of ``pad_color``. Three implementations of the same transform:

- :class:`PilPreprocess`: PIL image -> (3, S, S) float, one image at a time. The reference; equals
  torchvision's ``Resize + CenterCrop + ToTensor + Normalize`` but does not import torchvision (which
  costs seconds of cold start).
- :class:`ResizeCropU8` + :func:`normalize_batch`: the CPU fast path. Workers resize and crop in PIL and
  ship (3, S, S) **uint8** (4x less inter-process traffic than float); the batch is converted and
  normalised in one fused op where the model runs, in the model's memory format.
- :func:`resize_crop_tensor`: the same resize + crop on a decoded (3, H, W) uint8 tensor on any device
  (used after ``torchvision.io.decode_jpeg(..., device="cuda")``); bicubic with antialiasing, which
  matches PIL's filter within a few grey levels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import ImageTowerCfg
from .crop import crop_box, resize_crop_pil, resized_size


def pil_to_u8(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor."""
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ResizeCropU8:
    """PIL RGB image -> (3, S, S) uint8 tensor (resized and cropped, not yet normalised)."""

    def __init__(self, cfg: ImageTowerCfg, reducing_gap: float | None = None):
        self.resize_size, self.image_size, self.reducing_gap = cfg.resize_size, cfg.image_size, reducing_gap
        self.geometry, self.pad_color = cfg.geometry, tuple(cfg.pad_color)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return pil_to_u8(resize_crop_pil(im, self.resize_size, self.image_size, self.reducing_gap, self.geometry,
                                         self.pad_color))


def normalize_batch(x: torch.Tensor, mean, std, channels_last: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, S, S) uint8 (or float in [0, 255]) -> normalised float ``(x / 255 - mean) / std``.

    One fused multiply-add per element instead of ToTensor + Normalize per image.
    """
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.addcmul(shift, x.to(torch.float32), scale).contiguous(memory_format=fmt)
    return out if dtype == torch.float32 else out.to(dtype)


def resize_crop_tensor(img: torch.Tensor, resize_size: int, image_size: int, geometry: str = "crop",
                       pad_color=(0, 0, 0)) -> torch.Tensor:
    """(3, H, W) uint8 on any device -> (3, S, S) uint8 on the same device: bicubic antialiased short-side
    resize then centre crop, or with ``geometry="pad"`` long side to S centred on ``pad_color`` (the tensor
    twin of :func:`resize_crop_pil`)."""
    _, h, w = img.shape
    x = img.unsqueeze(0).to(torch.float32)
    fill = torch.tensor(pad_color, dtype=torch.float32, device=img.device).view(1, 3, 1, 1)
    if geometry == "pad":
        scale = image_size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        out = fill.expand(1, 3, image_size, image_size).clone()
        top, left = (image_size - nh) // 2, (image_size - nw) // 2
        out[:, :, top:top + nh, left:left + nw] = x
        return out[0].round_().clamp_(0, 255).to(torch.uint8)
    nw, nh = resized_size(w, h, resize_size)
    if (nw, nh) != (w, h):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    if nw < image_size or nh < image_size:
        pw, ph = max(0, image_size - nw), max(0, image_size - nh)
        canvas = fill.expand(1, 3, max(nh, image_size), max(nw, image_size)).clone()
        canvas[:, :, ph // 2:ph // 2 + nh, pw // 2:pw // 2 + nw] = x
        x = canvas
        nh, nw = x.shape[-2:]
    left, top, right, bottom = crop_box(nw, nh, image_size)
    return x[0, :, top:bottom, left:right].round_().clamp_(0, 255).to(torch.uint8)


class PilPreprocess:
    """PIL RGB image -> (3, S, S) float, normalised: the one-image-at-a-time reference transform."""

    def __init__(self, cfg: ImageTowerCfg):
        self.cfg = cfg
        self._u8 = ResizeCropU8(cfg)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return normalize_batch(self._u8(im).unsqueeze(0), self.cfg.mean, self.cfg.std)[0]
