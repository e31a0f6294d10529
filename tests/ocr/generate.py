"""Render the OCR test images: known text in known fonts, so the /ocr guest can be scored.

Each image gets lines of dark text on a light background (one image turned upside down,
for the direction classifier); `expected.json` lists every image's lines, top to bottom
as the image shows them. The images and `expected.json` are committed: this script is
how they were made, not a build step.

Fonts come from Debian packages (installed by `apt-get install fonts-droid-fallback
fonts-dejavu-core`), checked by sha256 so a rerun draws the same glyphs:
- Droid Sans Fallback (fonts-droid-fallback 1:6.0.1r16-1.1, Apache-2.0) for Chinese lines;
- DejaVu Sans (fonts-dejavu-core 2.37-6, Bitstream Vera license) for Latin lines.

Run with Pillow 11.3.0: python3 tests/ocr/generate.py
"""

import hashlib
import json
import pathlib

from PIL import Image, ImageDraw, ImageFont

HERE = pathlib.Path(__file__).resolve().parent
FONTS = {
    "chinese": (
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
        "acb6440a713d880a13a21b468ba7cd43f5a2b2934972e51be791c880730777b8",
    ),
    "latin": (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322",
    ),
}

# (file, font size, background, lines as (font, text), rotated by 180 degrees)
IMAGES = [
    ("latin.png", 30, (255, 255, 255), [
        ("latin", "Edge inference on WebAssembly"),
        ("latin", "The quick brown fox jumps over the lazy dog"),
        ("latin", "Invoice 2026-11-23 total 48.50 EUR"),
    ], False),
    ("chinese.png", 32, (255, 255, 255), [
        ("chinese", "边缘推理运行时"),
        ("chinese", "今天天气很好，我们去公园散步"),
        ("chinese", "模型并行与流水线并行"),
    ], False),
    ("mixed.jpg", 30, (246, 242, 232), [
        ("chinese", "欢迎使用文字识别服务"),
        ("latin", "Order number 73915"),
        ("chinese", "北京市海淀区中关村大街"),
        ("latin", "Contact: ocr@example.com"),
    ], False),
    ("sign.png", 44, (250, 250, 250), [
        ("chinese", "出口"),
        ("latin", "EXIT"),
    ], False),
    ("upside-down.png", 30, (255, 255, 255), [
        ("latin", "Pipelines overlap across requests"),
        ("chinese", "每个模型都有自己的调度器"),
    ], True),
]

MARGIN = 24
LINE_GAP = 0.8  # blank space between lines, as a share of the font size


def font(kind, size):
    path, digest = FONTS[kind]
    data = pathlib.Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit(f"{path} is not the font this script was written for (sha256 differs)")
    return ImageFont.truetype(path, size)


def render(size, background, lines, upside_down):
    fonts = [font(kind, size) for kind, _ in lines]
    boxes = [f.getbbox(text) for f, (_, text) in zip(fonts, lines)]
    width = max(right for _, _, right, _ in boxes) + 2 * MARGIN
    line_height = int(size * (1 + LINE_GAP))
    height = line_height * len(lines) + 2 * MARGIN
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for index, (f, (_, text)) in enumerate(zip(fonts, lines)):
        draw.text((MARGIN, MARGIN + index * line_height), text, font=f, fill=(20, 20, 20))
    return image.rotate(180) if upside_down else image


def main():
    expected = {}
    for file, size, background, lines, upside_down in IMAGES:
        image = render(size, background, lines, upside_down)
        path = HERE / file
        if file.endswith(".jpg"):
            image.save(path, quality=90)
        else:
            image.save(path, optimize=True)
        # The lines as the image shows them, top to bottom.
        texts = [text for _, text in lines]
        expected[file] = texts[::-1] if upside_down else texts
        print(f"{file}: {image.width}x{image.height}, {len(lines)} lines")
    (HERE / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
