"""`python -m kdns`: the same as the `kdns` console script."""

from kdns.cli import run

run()
