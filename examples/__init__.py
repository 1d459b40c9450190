"""Runnable examples of backends that adopt aiassist."""
