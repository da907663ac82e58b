"""The calibration's curve as a PNG (pillow's ImageDraw): the loop's accuracy against the rejection threshold,
the accuracy without the loop, the judge's false-accept / false-reject rates on the first answers, and the
threshold picked (spark.evaluation.calibration.calibrate's result)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN, LEGEND = 900, 480, 60, 260  # LEGEND: the width right of the plot
# What is drawn, in which colour: each curve's key in the result's points, then the flat and vertical lines.
SERIES = {"accuracy": ("accuracy with TTS", (31, 119, 180)),
          "false_accept_rate": ("judge false-accept rate", (214, 39, 40)),
          "false_reject_rate": ("judge false-reject rate", (255, 127, 14))}
NO_TTS, PICKED, AXES = (90, 90, 90), (44, 160, 44), (0, 0, 0)


def _xy(threshold: float, value: float) -> tuple[float, float]:
    return (MARGIN + threshold * (WIDTH - LEGEND - 2 * MARGIN), HEIGHT - MARGIN - value * (HEIGHT - 2 * MARGIN))


def _steps(curve: list[dict], key: str) -> list[tuple[float, float]]:
    """A step line: each point's value holds from its threshold up to the next one's."""
    points = []
    for row, after in zip(curve, curve[1:] + [curve[-1]]):
        points += [_xy(row["threshold"], row[key]), _xy(after["threshold"], row[key])]
    return points


def draw_curve(result: dict, path: str | Path, title: str = "") -> Path:
    """Write `result`'s curve to `path` (PNG) and return the path."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.line([_xy(0, 1), _xy(0, 0), _xy(1, 0)], fill=AXES, width=1)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = _xy(tick, 0)
        draw.line([(x, y), (x, y + 4)], fill=AXES)
        draw.text((x - 10, y + 8), f"{tick:g}", fill=AXES)
        x, y = _xy(0, tick)
        draw.line([(x - 4, y), (x, y)], fill=AXES)
        draw.text((x - 30, y - 6), f"{tick:g}", fill=AXES)
        draw.line([_xy(0, tick), _xy(1, tick)], fill=(230, 230, 230))
    draw.text((_xy(0.5, 0)[0] - 150, HEIGHT - 22), "threshold P: reflect when the judge's p(wrong) > P", fill=AXES)
    no_tts = result["no_tts_accuracy"]
    for start in range(0, 100, 4):  # dashed
        draw.line([_xy(start / 100, no_tts), _xy((start + 2) / 100, no_tts)], fill=NO_TTS, width=2)
    draw.line([_xy(result["threshold"], 0), _xy(result["threshold"], 1)], fill=PICKED, width=1)
    for key, (_, colour) in SERIES.items():
        draw.line(_steps(result["curve"], key), fill=colour, width=2)
    legend = [(f"{label}" + (f" (best {result['accuracy']:.3f})" if key == "accuracy" else ""), colour)
              for key, (label, colour) in SERIES.items()]
    legend += [(f"without TTS ({no_tts:.3f})", NO_TTS), (f"threshold picked: {result['threshold']:.3f}", PICKED)]
    for row, (label, colour) in enumerate(legend):
        x, y = WIDTH - LEGEND + 10, MARGIN + 16 * row
        draw.line([(x, y + 6), (x + 20, y + 6)], fill=colour, width=2)
        draw.text((x + 26, y), label, fill=AXES)
    draw.text((MARGIN, 12), title or f"TTS calibration on {result['n']} problems", fill=AXES)
    path = Path(path)
    image.save(path)
    return path
