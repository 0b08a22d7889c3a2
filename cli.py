#!/usr/bin/env python
"""Launcher for a checkout: ``python cli.py --help`` lists the commands (the same as the smolvla-* scripts)."""

from behavior_smolvla.cli import main

if __name__ == "__main__":
    main()
