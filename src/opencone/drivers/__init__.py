"""Drivers: the processes behind a computer (Chromium, Xvfb, sandboxed exec).

A driver knows nothing about HTTP or the store; it receives plain arguments in
screen pixels and canonical key names, and raises ``DriverError`` when an
action fails inside the computer.
"""
