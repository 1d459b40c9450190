"""Adapters for the frameworks a backend already uses."""
