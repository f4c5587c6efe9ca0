"""Draw Hero's app icons (SVG + PNG) without any image library: a PNG is zlib and a few CRCs.

Run `python scripts/make_icons.py` to rewrite hero/web/static/icons/. The icon is a white
lightning bolt (power) on a blue rounded square;
the maskable variant is full-bleed with the bolt inside the 80 % safe zone.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "hero" / "web" / "static" / "icons"
BG_TOP = (0x3B, 0x6E, 0xF0)
BG_BOTTOM = (0x1D, 0x45, 0xB8)
FG = (0xFF, 0xFF, 0xFF)
# The bolt in a 100 × 100 box.
BOLT = [(57, 10), (25, 55), (46, 55), (40, 90), (75, 43), (54, 43), (62, 10)]


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def inside(poly: list[tuple[float, float]], x: float, y: float) -> bool:
    hit = False
    for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


def in_rounded(x: float, y: float, size: float, radius: float) -> bool:
    cx = min(max(x, radius), size - radius)
    cy = min(max(y, radius), size - radius)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def draw(size: int, *, maskable: bool) -> bytes:
    """Rasterise with 4×4 supersampling for smooth edges."""
    scale = 0.74 if maskable else 0.82  # bolt box relative to the icon
    offset = (1 - scale) / 2
    radius = 0 if maskable else 0.22 * size
    bolt = [((offset + scale * px / 100) * size, (offset + scale * py / 100) * size) for px, py in BOLT]
    rows = []
    n = 4
    for y in range(size):
        row = bytearray()
        t = y / max(1, size - 1)
        bg = tuple(round(a + (b - a) * t) for a, b in zip(BG_TOP, BG_BOTTOM, strict=True))
        for x in range(size):
            cover = fg = 0
            for sy in range(n):
                for sx in range(n):
                    px, py = x + (sx + 0.5) / n, y + (sy + 0.5) / n
                    if maskable or in_rounded(px, py, size, radius):
                        cover += 1
                        fg += inside(bolt, px, py)
            alpha = cover / (n * n)
            if cover:
                mix = fg / cover
                rgb = [round(b + (f - b) * mix) for b, f in zip(bg, FG, strict=True)]
            else:
                rgb = [0, 0, 0]
            row += bytes([*rgb, round(alpha * 255)])
        rows.append(bytes(row))
    return png(size, size, rows)


def svg(*, maskable: bool) -> str:
    scale = 0.74 if maskable else 0.82
    offset = (1 - scale) / 2 * 100
    points = " ".join(f"{offset + scale * x:.1f},{offset + scale * y:.1f}" for x, y in BOLT)
    rx = 0 if maskable else 22
    top = "#{:02x}{:02x}{:02x}".format(*BG_TOP)
    bottom = "#{:02x}{:02x}{:02x}".format(*BG_BOTTOM)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100" role="img" aria-label="Hero">\n'
        f'  <defs><linearGradient id="g" x1="0" y1="0" x2="0" y2="1">'
        f'<stop offset="0" stop-color="{top}"/><stop offset="1" stop-color="{bottom}"/></linearGradient></defs>\n'
        f'  <rect width="100" height="100" rx="{rx}" fill="url(#g)"/>\n'
        f'  <polygon points="{points}" fill="#fff"/>\n'
        "</svg>\n"
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "icon.svg").write_text(svg(maskable=False))
    (OUT / "maskable.svg").write_text(svg(maskable=True))
    for name, size, maskable in (
        ("icon-192.png", 192, False),
        ("icon-512.png", 512, False),
        ("maskable-512.png", 512, True),
        ("apple-touch-icon.png", 180, True),  # iOS rounds the corners itself and shows alpha as black
    ):
        (OUT / name).write_bytes(draw(size, maskable=maskable))
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
