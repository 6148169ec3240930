"""A 3x5 pixel font for the games' score displays."""

import numpy as np

_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
}
DIGITS = {k: np.array([c == "1" for c in v]).reshape(5, 3) for k, v in _GLYPHS.items()}


def draw_number(img: np.ndarray, value: int, x: int, y: int, color, digits: int) -> None:
    """Draw `value` zero-padded to `digits` digits at (x, y) into an (H, W, 3) image.

    >>> img = np.zeros((7, 12, 3), np.uint8)
    >>> draw_number(img, 7, x=0, y=0, color=(255, 255, 255), digits=3)
    >>> int(img[..., 0].astype(bool).sum())  # "0", "0", "7": 12 + 12 + 7 lit pixels
    31
    """
    for i, ch in enumerate(f"{value:0{digits}d}"[-digits:]):
        glyph = DIGITS[ch]
        img[y : y + 5, x + 4 * i : x + 4 * i + 3][glyph] = color
