"""Every route the hub serves and every setting it has is documented."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import hub_config

from minihub.app import make_app
from minihub.config import SETTINGS, generate

ROOT = Path(__file__).parent.parent


def test_every_route_is_documented(tmp_path):
    doc = (ROOT / "docs" / "routes.md").read_text()
    app = make_app(hub_config(str(tmp_path)))
    missing = [
        r.canonical
        for r in app.router.resources()
        if f"`{r.canonical}`" not in doc and r.canonical != "/"
    ]
    assert not missing, f"add these routes to docs/routes.md: {missing}"


def test_every_setting_has_help_and_appears_in_generated_config():
    text = generate()
    for s in SETTINGS:
        assert len(s.help) > 10, f"{s.key} needs help text"
        assert re.search(rf"^# {s.name} = ", text, re.MULTILINE), s.key


def test_example_config_is_generated_from_the_settings_table():
    """The top-level minihub.toml is what `minihub --generate-config` writes now."""
    committed = (ROOT / "minihub.toml").read_text()
    assert committed == generate(), (
        "minihub.toml is out of date with the settings in minihub/config.py: "
        "run `bash scripts/gen-config` and commit minihub.toml"
    )
