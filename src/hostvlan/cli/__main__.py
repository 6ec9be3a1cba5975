"""`python -m hostvlan.cli …` (how the testbed starts the manager and agents)."""

from hostvlan.cli import main

main()
