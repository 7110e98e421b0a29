"""The web layer: app factory, route table, handlers, viewer sessions and the CLI."""
