"""Rendering: byte formatting, rich tables and JSON documents for the CLI and the app."""
