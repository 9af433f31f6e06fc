"""Every route the hub serves and every setting it has is documented."""

from __future__ import annotations

import re
from pathlib import Path

from minihub.app import make_app
from minihub.config import SETTINGS, generate

from conftest import hub_config

ROOT = Path(__file__).parent.parent


def test_every_route_is_documented(tmp_path):
    doc = (ROOT / "docs" / "routes.md").read_text()
    app = make_app(hub_config(str(tmp_path)))
    missing = [r.canonical for r in app.router.resources()
               if f"`{r.canonical}`" not in doc and r.canonical != "/"]
    assert not missing, f"add these routes to docs/routes.md: {missing}"


def test_every_setting_has_help_and_appears_in_generated_config():
    text = generate()
    for s in SETTINGS:
        assert len(s.help) > 10, f"{s.key} needs help text"
        assert re.search(rf"^# {s.name} = ", text, re.M), s.key
