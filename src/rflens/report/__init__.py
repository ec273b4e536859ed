"""Presenters: turn result objects into tables, JSON and figures. They never compute."""
