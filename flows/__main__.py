"""`python -m flows up|down|status|env|serve`: see flows.cli."""
import sys

from flows.cli import main

sys.exit(main())
