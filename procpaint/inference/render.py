"""A trajectory as one strip image (the paper's Figure 4): each image with the text that led to it.

    +-- prompt  (mode, end reason, images, forward passes, seconds) ------------------+
    | [draft]            | [refined]          | [draft]            | text after the   |
    | plan: <ins>..      | critique: ..       | critique: ..       | last image       |
    |                    | refine: <refine>.. | plan: <ins>..      |                  |
    +--------------------+--------------------+--------------------+------------------+

PIL with its default font; images are upscaled with nearest neighbour so procedural pixels stay sharp.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from procpaint.inference.types import TrajectoryResult
from procpaint.io import to_uint8, write_image

BG, FG, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


def _columns(result: TrajectoryResult) -> list[tuple[torch.Tensor | None, str, list[str]]]:
    """(image or None, image label, caption lines) per column."""
    cols, texts = [], []
    for s in result.stages:
        if s.image is None:
            if s.text:
                texts.append(f"{s.kind}: {s.text}")
            continue
        cols.append((s.image, s.kind, texts))
        texts = []
    if texts or not cols:
        cols.append((None, "" if texts else "(no image)", texts))
    return cols


def render_strip(result: TrajectoryResult, *, cell: int = 160, wrap: int = 26) -> Image.Image:
    """The strip of ``result`` as a PIL RGB image (one column per image, ``cell`` pixels wide)."""
    font = ImageFont.load_default()
    line_h = 12
    cols = _columns(result)
    wrapped = [[w for line in lines for w in (textwrap.wrap(line, wrap) or [""])] for _, _, lines in cols]
    header = [f"prompt: {result.prompt}",
              f"{result.mode} | end: {result.end_reason} | images: {result.num_images} | "
              f"forward passes: {result.forward_passes} | {result.seconds:.2f} s"]
    header = [w for line in header for w in textwrap.wrap(line, max(40, wrap * len(cols)))]
    pad = 6
    top = pad + line_h * len(header) + pad
    text_h = line_h * max(1, max(len(w) for w in wrapped))
    width = len(cols) * (cell + pad) + pad
    height = top + line_h + cell + pad + text_h + pad
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((pad, pad + i * line_h), line, fill=FG, font=font)
    for c, ((img, label, _), lines) in enumerate(zip(cols, wrapped)):
        x = pad + c * (cell + pad)
        draw.text((x, top), label, fill=MUTED, font=font)
        y = top + line_h
        if img is not None:
            canvas.paste(Image.fromarray(to_uint8(img)).resize((cell, cell), Image.NEAREST), (x, y))
        else:
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=MUTED)
        for j, line in enumerate(lines):
            draw.text((x, y + cell + pad + j * line_h), line, fill=FG, font=font)
    return canvas


def save_strip(result: TrajectoryResult, path: str | Path, **kwargs) -> Path:
    """Render and write the strip PNG (temporary name, then rename); returns the path."""
    return write_image(path, render_strip(result, **kwargs))
