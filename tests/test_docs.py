"""The documentation: the site builds with warnings as errors, README links resolve, every setting is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import settings

ROOT = Path(__file__).resolve().parents[1]
# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) or only an anchor are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: broken internal links, missing nav pages, docstring and hook errors all fail."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    settings_page = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    for setting in settings.all_settings():
        assert setting.name in settings_page  # generated, so every one is there
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "workbench promote" in cli_page and "--checkpoint" in cli_page


def _relative_links(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)  # links inside code blocks are not links
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_links_resolve() -> None:
    links = _relative_links((ROOT / "README.md").read_text())
    assert links, "the README links into the docs"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_link_finder_sees_links() -> None:
    found = _relative_links('[a](docs/x.md) [b](https://x.org) [c](#top) ![d](img.png "t")\n```\n[e](no.md)\n```')
    assert found == ["docs/x.md", "img.png"]


@pytest.mark.parametrize("setting", settings.all_settings(), ids=lambda s: s.name)
def test_every_setting_has_help(setting: settings.Setting) -> None:
    """The settings reference is generated from these: a setting without a real one-line help is undocumented."""
    # WORKBENCH_*, or a variable of another tool the workbench reads or sets (KUBECONFIG, TF_CPP_MIN_LOG_LEVEL)
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", setting.name), setting.name
    assert len(setting.help.split()) >= 4, f"{setting.name}: help text {setting.help!r} is too short to explain it"


def test_setting_names_are_unique() -> None:
    names = [s.name for s in settings.all_settings()]
    assert len(names) == len(set(names))


# A hand-written table row naming a setting and its default: | `WORKBENCH_X` | `value` | ...
ROW = re.compile(r"^\|\s*`(WORKBENCH_[A-Z0-9_]+)`\s*\|\s*`([^`]*)`\s*\|", re.M)


def test_hand_written_defaults_match_settings() -> None:
    """Pages that quote a setting's default in a table (docs/serving.md's limits) quote the current one."""
    home = str(Path.home())
    defaults = {s.name: s.default.replace(home, "~", 1) for s in settings.all_settings()}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    stale = [
        f"{page.relative_to(ROOT)}: {name} = {quoted!r}, settings.py says {defaults[name]!r}"
        for page in pages
        for name, quoted in ROW.findall(page.read_text())
        if defaults.get(name) and quoted != defaults[name]  # an empty default is computed: pages describe it
    ]
    assert not stale, "\n".join(stale)
