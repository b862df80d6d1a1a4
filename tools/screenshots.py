"""``python -m tools.screenshots [--experiment demo] [--out docs/screenshots] [--widths 1440,1280,800]``
(``make screenshots``): every page at three window widths, taken in Chromium from a live dashboard on the experiment's
artifacts, for the README. At 1440 px the whole page (``overview.png``); at other widths the first screen, as a reader
on a laptop or a half-width window sees it (``overview-800.png``), which keeps them small."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

from tools.live import PROJECT_ROOT, chromium, serve, wait_idle

# file name -> URL path and query (each page in a state worth seeing)
VIEWS = {
    "overview": "/",
    "pipeline": "/pipeline",
    "confusion": "/confusion?cell=a:tp",
    "image_browser": "/images",
    "stain_comparison": "/stain",
    "ensemble_builder": "/ensemble",
    "compare_experiments": "/experiments?exps={experiment}_image_level&exps={experiment}",  # the image-level twin beside it
    "embedding": "/embedding",
    "training_curves": "/training",
    "gradcam": "/gradcam",
}


WIDTHS = (1440, 1280, 800)
FULL_WIDTH = 1440  # whole pages (``overview.png``); every other width is the first screen (``overview-800.png``)


def take(artifacts: Path, experiment: str, out: Path, views: dict[str, str] = VIEWS, widths: tuple[int, ...] = WIDTHS,
         twin: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve(artifacts, experiment) as (url, _), chromium(1440, 1000) as page:
        for width in widths:
            if width != FULL_WIDTH:
                shots += _first_screens(page, url, experiment, out, views, width, twin)
                continue
            shots += _full_pages(page, url, experiment, out, views, twin, width)
    return shots


def _path(path: str, experiment: str, twin: str | None) -> str:
    path = path.format(experiment=experiment)
    return path.replace(f"{experiment}_image_level", twin) if twin else path


def _save_small(shot: Path) -> None:
    with Image.open(shot) as img:  # 256-colour PNGs: a third of the size, plenty for documentation
        small = img.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    small.save(shot, optimize=True)


def _first_screens(page, url: str, experiment: str, out: Path, views: dict[str, str], width: int,
                   twin: str | None) -> list[Path]:
    page.set_viewport_size({"width": width, "height": 900})
    shots = []
    for name, path in views.items():
        path = _path(path, experiment, twin)
        sep = "&" if "?" in path else "?"
        page.goto(f"{url}{path}{sep}exp={experiment}")
        page.wait_for_selector("h1", timeout=60_000)
        wait_idle(page)
        page.wait_for_timeout(800)
        shot = out / f"{name}-{width}.png"
        page.screenshot(path=str(shot))
        _save_small(shot)
        shots.append(shot)
    return shots


def _full_pages(page, url: str, experiment: str, out: Path, views: dict[str, str], twin: str | None,
                width: int = 1440) -> list[Path]:
    shots = []
    for name, path in views.items():
        path = _path(path, experiment, twin)
        sep = "&" if "?" in path else "?"
        page.goto(f"{url}{path}{sep}exp={experiment}")
        page.wait_for_selector("h1", timeout=60_000)
        wait_idle(page)
        # Streamlit scrolls inside <main>, not the document: grow the window to the content, then load the page
        # again at that size and shoot. (Resizing a drawn page left plotly charts and the canvas-drawn tables
        # blank: they redraw asynchronously after a resize; a fresh load draws them at the final size.)
        height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        page.set_viewport_size({"width": width, "height": min(max(1000, height), 9000)})
        page.goto(f"{url}{path}{sep}exp={experiment}")
        page.wait_for_selector("h1", timeout=60_000)
        wait_idle(page)
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('.main-svg'))",
                               timeout=30_000)
        page.wait_for_timeout(800)  # let plotly and the tables finish drawing (screenshots only; tests wait on content)
        shot = out / f"{name}.png"
        page.screenshot(path=str(shot))
        _save_small(shot)
        page.set_viewport_size({"width": width, "height": 1000})
        shots.append(shot)
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--artifacts", default=os.environ.get("HISTOCOMPARE_ARTIFACTS", str(PROJECT_ROOT / "artifacts")))
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "screenshots"))
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)),
                        help="window widths in px, comma-separated; 1440 is shot as whole pages")
    parser.add_argument("--twin", default=None, help="the experiment the compare view puts beside it "
                                                      "(default: EXPERIMENT_image_level)")
    args = parser.parse_args(argv)
    try:
        widths = tuple(sorted({int(w) for w in args.widths.split(",")}, reverse=True))
    except ValueError:
        parser.error(f"--widths must be numbers separated by commas, got {args.widths!r}")
    artifacts = Path(args.artifacts).resolve()
    if not (artifacts / args.experiment).is_dir():
        parser.error(f"no experiment {args.experiment!r} under {artifacts}; run `make demo` first")
    for shot in take(artifacts, args.experiment, Path(args.out), widths=widths, twin=args.twin):
        print(shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
