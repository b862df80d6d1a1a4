"""``python -m tools.screenshots [--experiment demo] [--out docs/screenshots]`` (``make screenshots``): one PNG per
page, taken in Chromium from a live dashboard on the experiment's artifacts, for the README."""

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


def take(artifacts: Path, experiment: str, out: Path, views: dict[str, str] = VIEWS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve(artifacts, experiment) as (url, _), chromium(1440, 1000) as page:
        for name, path in views.items():
            path = path.format(experiment=experiment)
            sep = "&" if "?" in path else "?"
            page.goto(f"{url}{path}{sep}exp={experiment}")
            page.wait_for_selector("h1", timeout=60_000)
            wait_idle(page)
            # Streamlit scrolls inside <main>, not the document: grow the window to the content, then load the page
            # again at that size and shoot. (Resizing a drawn page left plotly charts and the canvas-drawn tables
            # blank: they redraw asynchronously after a resize; a fresh load draws them at the final size.)
            height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
            page.set_viewport_size({"width": 1440, "height": min(max(1000, height), 9000)})
            page.goto(f"{url}{path}{sep}exp={experiment}")
            page.wait_for_selector("h1", timeout=60_000)
            wait_idle(page)
            page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('.main-svg'))",
                                   timeout=30_000)
            page.wait_for_timeout(800)  # let plotly and the tables finish drawing (screenshots only; tests wait on content)
            shot = out / f"{name}.png"
            page.screenshot(path=str(shot))
            with Image.open(shot) as img:  # 256-colour PNGs: a third of the size, plenty for documentation
                small = img.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
            small.save(shot, optimize=True)
            page.set_viewport_size({"width": 1440, "height": 1000})
            shots.append(shot)
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--artifacts", default=os.environ.get("HISTOCOMPARE_ARTIFACTS", str(PROJECT_ROOT / "artifacts")))
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    artifacts = Path(args.artifacts).resolve()
    if not (artifacts / args.experiment).is_dir():
        parser.error(f"no experiment {args.experiment!r} under {artifacts}; run `make demo` first")
    for shot in take(artifacts, args.experiment, Path(args.out)):
        print(shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
