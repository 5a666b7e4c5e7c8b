"""Pictures and an HTML page of a result, with no plotting library.

PNG files are encoded here directly (zlib + the PNG chunk layout), so the
report works wherever QSMLib does.
"""

import html
import os
import struct
import zlib

import numpy as np

#: Susceptibility display window in ppm (as in the Slicer modules).
CHI_WINDOW_PPM = 0.15
#: Colour of the voxels outside the mask in susceptibility pictures.
OUTSIDE_RGB = (48, 48, 48)


def write_png(path, image):
    """Write an 8-bit grey (H, W) or RGB (H, W, 3) array as a PNG file."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"PNG needs (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def diverging_rgb(values, limit):
    """Blue-white-red colours for ``values`` in [-limit, limit] (0 is white)."""
    t = np.clip(np.asarray(values, np.float64) / limit, -1.0, 1.0)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    red = 1.0 - 0.75 * neg
    green = 1.0 - 0.8 * np.abs(t)
    blue = 1.0 - 0.75 * pos
    return (np.stack([red, green, blue], axis=-1) * 255).round().astype(np.uint8)


def grey_rgb(values, low, high):
    """Grey levels for ``values`` windowed to [low, high]."""
    t = np.clip((np.asarray(values, np.float64) - low) / max(high - low, 1e-12), 0, 1)
    return np.repeat((t * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def orthogonal_slices(volume, centre, voxel_size):
    """Axial, coronal and sagittal slices through ``centre``, oriented for display.

    Assumes RAS-like voxel axes (i: left-right, j: posterior-anterior,
    k: inferior-superior); each slice is resampled to square pixels.
    """
    i, j, k = (int(c) for c in centre)
    vs = voxel_size
    cuts = [(volume[:, :, k], vs[0], vs[1]), (volume[:, j, :], vs[0], vs[2]), (volume[i, :, :], vs[1], vs[2])]
    out = []
    for plane, du, dv in cuts:
        picture = np.flipud(plane.T)
        scale_u, scale_v = du / min(vs), dv / min(vs)
        rows = np.clip((np.arange(round(picture.shape[0] * scale_v)) / scale_v).astype(int), 0, picture.shape[0] - 1)
        cols = np.clip((np.arange(round(picture.shape[1] * scale_u)) / scale_u).astype(int), 0, picture.shape[1] - 1)
        out.append(picture[np.ix_(rows, cols)])
    return out


def montage(rows, gap=4):
    """Stack rows of RGB tiles into one image on a dark background."""
    heights = [max(t.shape[0] for t in row) for row in rows]
    width = max(sum(t.shape[1] for t in row) + gap * (len(row) + 1) for row in rows)
    canvas = np.full((sum(heights) + gap * (len(rows) + 1), width, 3), 24, np.uint8)
    y = gap
    for row, h in zip(rows, heights):
        x = gap
        for tile in row:
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
            x += tile.shape[1] + gap
        y += h + gap
    return canvas


def overview_image(maps, mask, voxel_size):
    """One row per map ``(title, volume, kind)``; kind is ``"chi"`` or ``"grey"``."""
    coords = np.argwhere(mask)
    centre = coords.mean(axis=0) if coords.size else np.array(mask.shape) / 2
    rows = []
    outside = [~tile for tile in orthogonal_slices(mask, centre, voxel_size)]
    for _title, volume, kind in maps:
        tiles = orthogonal_slices(volume, centre, voxel_size)
        if kind == "chi":
            # outside the mask in dark grey, so that 0 ppm (white) is not confused with "no data"
            coloured = [diverging_rgb(t, CHI_WINDOW_PPM) for t in tiles]
            for picture, out in zip(coloured, outside):
                picture[out] = OUTSIDE_RGB
            rows.append(coloured)
        else:
            inside = volume[mask] if mask.any() else volume.ravel()
            low, high = np.percentile(inside, [1, 99.5])
            rows.append([grey_rgb(t, low, high) for t in tiles])
    return montage(rows)


def html_report(title, image_name, row_titles, tables, notes=()):
    """A self-contained HTML page: the overview image, its row titles, and tables.

    ``tables`` is a list of ``(caption, header, rows)``.
    """
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .7em;"
             "text-align:right}th{background:#eee}caption{font-weight:bold;text-align:left}</style>",
             f"</head><body><h1>{esc(title)}</h1>",
             f"<p>Rows, top to bottom: {esc(', '.join(row_titles))}. Columns: axial, coronal, sagittal. "
             f"Susceptibility window: -{CHI_WINDOW_PPM} (blue) to +{CHI_WINDOW_PPM} ppm (red); "
             "grey: outside the mask.</p>",
             f"<img src='{esc(image_name)}' alt='overview'>"]
    for caption, header, rows in tables:
        parts.append(f"<table><caption>{esc(caption)}</caption><tr>"
                     + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for note in notes:
        parts.append(f"<p>{esc(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_text(path, text):
    """Write text atomically enough for a report (the caller stages the folder)."""
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(text)
