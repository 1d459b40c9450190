"""An order center, the "main backend" of the three-process deployment (see README.md)."""
