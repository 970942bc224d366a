"""Pictures with Pillow only: label colouring, overlays, comparison grids, learning curves."""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data import colorize

__all__ = ["overlay", "grid", "learning_curves"]

SERIES_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
]


def overlay(img, label, alpha=0.5):
    """Blend the palette colours of `label` over `img` (uint8 RGB) where the label is
    not background (0); void (255) is drawn in the palette's cream."""
    img = np.asarray(img).astype(np.float32)
    col = colorize(label).astype(np.float32)
    m = (np.asarray(label) != 0)[..., None]
    out = np.where(m, (1 - alpha) * img + alpha * col, img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font():
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(rows, titles=None, scale=3, pad=4, title_h=20, background=(255, 255, 255)):
    """Tile `rows` (lists of equally sized uint8 RGB arrays) into one image, each tile
    enlarged `scale` times (nearest), with column `titles` on top."""
    h, w = rows[0][0].shape[:2]
    th, tw = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    top = title_h if titles else 0
    W = ncol * tw + (ncol + 1) * pad
    H = top + len(rows) * th + (len(rows) + 1) * pad
    canvas = Image.new("RGB", (W, H), background)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if titles:
        for c, t in enumerate(titles):
            x = pad + c * (tw + pad)
            tl = draw.textlength(t, font=font)
            draw.text((x + (tw - tl) / 2, 3), t, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            im = Image.fromarray(np.asarray(tile, np.uint8)).resize((tw, th), Image.NEAREST)
            canvas.paste(im, (pad + c * (tw + pad), top + pad + r * (th + pad)))
    return canvas


def _nice_ticks(lo, hi, n=5):
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _panel(draw, box, series, title, xlabel, ylabel, font, ylim=None, vlines=()):
    """Line plot of `series` [(name, xs, ys)] inside `box` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    left, bottom, top, right = 80, 36, 26, 10
    px0, py0, px1, py1 = x0 + left, y0 + top, x1 - right, y1 - bottom
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if math.isfinite(y)]
    draw.text((x0 + 4, y0 + 4), title, fill=(0, 0, 0), font=font)
    draw.rectangle((px0, py0, px1, py1), outline=(0, 0, 0))
    if not pts:
        return
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = ylim if ylim else (min(p[1] for p in pts), max(p[1] for p in pts))
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax = ymin + 1
    span = ymax - ymin
    if not ylim:
        ymin, ymax = ymin - 0.05 * span, ymax + 0.05 * span

    def X(x):
        return px0 + (x - xmin) / (xmax - xmin) * (px1 - px0)

    def Y(y):
        return py1 - (y - ymin) / (ymax - ymin) * (py1 - py0)

    for t in _nice_ticks(ymin, ymax):
        draw.line((px0, Y(t), px1, Y(t)), fill=(225, 225, 225))
        label = f"{t:g}"
        draw.text(
            (px0 - 6 - draw.textlength(label, font=font), Y(t) - 7),
            label,
            fill=(0, 0, 0),
            font=font,
        )
    for t in _nice_ticks(xmin, xmax):
        draw.line((X(t), py1, X(t), py1 + 4), fill=(0, 0, 0))
        label = f"{t:g}"
        draw.text(
            (X(t) - draw.textlength(label, font=font) / 2, py1 + 6),
            label,
            fill=(0, 0, 0),
            font=font,
        )
    for xv, name in vlines:
        draw.line((X(xv), py0, X(xv), py1), fill=(160, 160, 160))
        draw.text((X(xv) + 3, py0 + 2), name, fill=(120, 120, 120), font=font)
    draw.text(
        ((px0 + px1) / 2 - draw.textlength(xlabel, font=font) / 2, py1 + 20),
        xlabel,
        fill=(0, 0, 0),
        font=font,
    )
    draw.text((x0 + 4, (py0 + py1) / 2 - 7), ylabel, fill=(0, 0, 0), font=font)
    for k, (name, xs, ys) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        line = [(X(x), Y(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for a, b in line:
            draw.ellipse((a - 2, b - 2, a + 2, b + 2), fill=colour)
        # legend on the title line, right-aligned, outside the plot area
        lx = px1 - 80 * (len(series) - k)
        draw.line((lx, y0 + 11, lx + 16, y0 + 11), fill=colour, width=3)
        draw.text((lx + 20, y0 + 4), name, fill=(0, 0, 0), font=font)


def learning_curves(histories, size=(900, 360)):
    """Two panels from per-epoch training logs ``{name: [record, ...]}`` (records with
    ``step``, ``train_loss``, ``mean_iu``) of consecutive stages: training loss and
    validation mean IoU against the optimizer step, counted across stages."""
    W, H = size
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    loss_series, iou_series, vlines = [], [], []
    offset = 0
    for name, hist in histories.items():
        if not hist:
            continue
        xs = [offset + h["step"] for h in hist]
        loss_series.append((name, xs, [h["train_loss"] for h in hist]))
        iou_series.append((name, xs, [100 * h.get("mean_iu", float("nan")) for h in hist]))
        if offset:
            vlines.append((offset, name))
        offset = xs[-1]
    _panel(
        draw, (0, 0, W // 2, H), loss_series, "training loss", "step", "loss", font, vlines=vlines
    )
    _panel(
        draw,
        (W // 2, 0, W, H),
        iou_series,
        "validation mean IoU (%)",
        "step",
        "mIoU",
        font,
        vlines=vlines,
    )
    return canvas
