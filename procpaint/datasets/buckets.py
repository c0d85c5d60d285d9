"""Image sizes by BAGEL's bucketing rule: keep the aspect ratio, bound the sides, snap to a stride.

BAGEL (ByteDance-Seed/Bagel, ``data/transforms.py``: ``MaxLongEdgeMinShortEdgeResize`` inside
``ImageTransform``) resizes every image before its VAE (stride 16 = VAE downsample 8 x latent patch 2;
max side 1024, min side 512 at inference) and its SigLIP ViT (stride 14 = ViT patch; 980 / 224), with a
pixel budget of 14*14*9*1024. Written afresh from that rule:

1. scale = min(max_side / long side, 1), then at least min_side / short side (small images grow);
2. each side -> round(side * scale), snapped to the nearest multiple of ``stride`` (at least one stride);
3. over ``max_pixels``: rescale by max_pixels / pixels -- BAGEL applies this *area* ratio as a linear
   factor (shrinking more than the budget needs); kept, so the sizes equal BAGEL's;
4. a long side still over ``max_side`` (an extreme aspect ratio that the min side blew up) is scaled back
   to it: the max side wins over the min side.

Each step rounds with Python's ``round`` (half to even) as BAGEL does. The resampling is Pillow's
bicubic filter, which is what torchvision's ``F.resize(..., BICUBIC, antialias=True)`` runs on a PIL
image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from PIL import Image, ImageOps

BAGEL_MAX_PIXELS = 14 * 14 * 9 * 1024


@dataclass(frozen=True)
class ImageBucket:
    """One resize rule; ``size(h, w)`` -> the (height, width) an image of that size is resized to."""

    max_side: int = 1024
    min_side: int = 512
    stride: int = 16
    max_pixels: int = BAGEL_MAX_PIXELS

    def __post_init__(self):
        if not (self.stride >= 1 and self.min_side >= 1 and self.max_side >= self.stride
                and self.max_side >= self.min_side and self.max_pixels >= self.stride ** 2):
            raise ValueError(f"image bucket needs stride >= 1, max_side >= min_side >= 1, max_side >= stride "
                             f"and max_pixels >= stride^2; got {self}")

    def _snap(self, width: float, height: float, scale: float) -> tuple[int, int]:
        s = self.stride
        return (max(s, round(round(width * scale) / s) * s), max(s, round(round(height * scale) / s) * s))

    def size(self, height: int, width: int) -> tuple[int, int]:
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        scale = max(min(self.max_side / max(width, height), 1.0), self.min_side / min(width, height))
        w, h = self._snap(width, height, scale)
        if w * h > self.max_pixels:
            w, h = self._snap(w, h, self.max_pixels / (w * h))
        if max(w, h) > self.max_side:
            w, h = self._snap(w, h, self.max_side / max(w, h))
        return h, w

    def to_dict(self) -> dict:
        """The manifest's form (``image_transform.vae`` / ``.vit``)."""
        return {**asdict(self), "interpolation": "bicubic"}

    @classmethod
    def from_dict(cls, d: dict) -> ImageBucket:
        return cls(**{k: v for k, v in d.items() if k != "interpolation"})

    @classmethod
    def parse(cls, text: str) -> ImageBucket:
        """``"MAX,MIN,STRIDE[,MAX_PIXELS]"`` (the CLI's form) -> ImageBucket."""
        try:
            parts = [int(p) for p in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (3, 4):
            raise ValueError(f"an image bucket is MAX_SIDE,MIN_SIDE,STRIDE[,MAX_PIXELS] (integers), "
                             f"got {text!r}")
        return cls(*parts)


# BAGEL's inference transforms (its inferencer / app): the VAE image and the ViT image.
BAGEL_VAE = ImageBucket(1024, 512, 16)
BAGEL_VIT = ImageBucket(980, 224, 14)


def to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied (what viewers show), transparency composited on white."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def resize_to_bucket(im: Image.Image, bucket: ImageBucket) -> Image.Image:
    """RGB image resized to ``bucket.size`` (bicubic; unchanged when already that size)."""
    im = to_rgb(im)
    h, w = bucket.size(im.height, im.width)
    return im if (im.height, im.width) == (h, w) else im.resize((w, h), Image.BICUBIC)
