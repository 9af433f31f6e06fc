"""The hub's browser side: server-rendered pages, templates, static assets, error pages."""
