"""JupyterHub's access model: principals, roles, groups, scopes and shares, in one place.

`Access.allows(principal, scope, target)` is the one decision the REST API, the pages, the
proxy's /user/ and /services/ routes and the metrics endpoint all ask.
"""

from __future__ import annotations

from .model import Access, Principal

__all__ = ["Access", "Principal"]
