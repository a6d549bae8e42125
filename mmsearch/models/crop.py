"""Short-side resize + centre crop (or pad to square) in PIL, without torch (the query path of a process that has none;
models/preprocess.py builds the torch transforms on the same geometry)."""

from __future__ import annotations

from PIL import Image


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(w, h) after scaling the short side to ``short``; same rounding as torchvision's Resize."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Centre crop box (left, top, right, bottom); same rounding as torchvision's CenterCrop."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def pad_square_pil(im: Image.Image, image_size: int, pad_color=(0, 0, 0),
                   reducing_gap: float | None = None) -> Image.Image:
    """The whole image: bicubic resize of the long side to ``image_size``, centred on a square of
    ``pad_color`` (nothing of a non-square object is cut)."""
    w, h = im.size
    scale = image_size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=reducing_gap)
    if (nw, nh) == (image_size, image_size):
        return im
    canvas = Image.new("RGB", (image_size, image_size), tuple(pad_color))
    canvas.paste(im, ((image_size - nw) // 2, (image_size - nh) // 2))
    return canvas


def resize_crop_pil(im: Image.Image, resize_size: int, image_size: int,
                    reducing_gap: float | None = None, geometry: str = "crop", pad_color=(0, 0, 0)) -> Image.Image:
    """Bicubic short-side resize then centre crop, in PIL (``geometry="pad"``: :func:`pad_square_pil`).

    ``reducing_gap`` (Pillow): first shrink by an integer factor with a box filter while the remaining
    scale stays above the gap, then bicubic. Much faster on big images; 3.0 is visually indistinguishable.
    """
    if geometry == "pad":
        return pad_square_pil(im, image_size, pad_color, reducing_gap)
    w, h = resized_size(*im.size, resize_size)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=reducing_gap)
    if w < image_size or h < image_size:  # tiny images: pad like torchvision's CenterCrop (border: pad_color)
        canvas = Image.new("RGB", (max(w, image_size), max(h, image_size)), tuple(pad_color))
        canvas.paste(im, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        im, (w, h) = canvas, canvas.size
    return im.crop(crop_box(w, h, image_size))
