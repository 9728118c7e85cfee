"""The report: self-contained HTML with embedded plots, Markdown and JSON, rendered by headless Chromium."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from prunekit.core.tables import ResultTable
from prunekit.report.html import Report, Section, render_html, write_report
from prunekit.report.plots import plot_heatmap, plot_pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report():
    rows = [
        {"method": "one-shot", "accuracy": 0.97, "gzip_bytes": 300},
        {"method": "gradual", "accuracy": 0.95, "gzip_bytes": 120},
        {"method": "dense", "accuracy": 0.98, "gzip_bytes": 550},
    ]
    table = ResultTable("Before and after", ["model", "accuracy"], [["dense", "98.0%"], ["gradual 90%", "95.0%"]])
    figures = [
        plot_pareto(rows, "gzip_bytes", front=[1, 0, 2]),
        plot_heatmap(["conv1", "fc1"], [0.5, 0.9], [[0.97, 0.4], [0.98, 0.95]], title="Sensitivity"),
    ]
    return Report(
        "Test <report>", [Section("Results", tables=[table], figures=figures)], data={"answer": 42}, recipe="name: test\n"
    )


def _embedded_pngs(html):
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_html_embeds_every_plot_as_a_non_empty_png():
    pngs = _embedded_pngs(render_html(_report()))
    assert len(pngs) == 2
    for png in pngs:
        assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_html_needs_no_other_file_and_escapes_text():
    html = render_html(_report())
    assert "Test &lt;report&gt;" in html
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from outside the file


def test_write_report_writes_html_markdown_with_figures_and_json(tmp_path):
    paths = write_report(_report(), tmp_path)
    markdown = paths["md"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 2 and all((tmp_path / link).read_bytes().startswith(PNG_MAGIC) for link in links)
    assert "| dense | 98.0% |" in markdown and "```yaml\nname: test" in markdown
    payload = json.loads(paths["json"].read_text())
    assert payload["data"] == {"answer": 42} and payload["recipe"] == "name: test\n"
    assert "python" in payload["versions"] and "torch" in payload["versions"]


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("headless Chromium is not installed and apt-get (as root) is unavailable to install Debian's chromium")
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=True)
        subprocess.run(install, capture_output=True, env=env, check=True)
    return shutil.which("chromium")


def test_report_renders_in_headless_chromium_with_the_plots_visible(tmp_path):
    chromium = _chromium()
    paths = write_report(_report(), tmp_path)
    shot = tmp_path / "screenshot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1800",
            f"--screenshot={shot}",
            paths["html"].as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    colored = float(np.mean(saturation > 0.3))  # plot markers and the heat-map; text and tables are grey
    assert colored > 0.005, f"only {colored:.2%} of the screenshot is colored: the plots did not render"
