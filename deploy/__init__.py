"""Deployment helpers: nothing here is on the live path (``realtime/`` never imports it)."""
