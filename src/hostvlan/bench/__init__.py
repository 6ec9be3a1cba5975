"""Benchmarks that run from the command line (`hostvlan bench …`); never part of `make test`."""
