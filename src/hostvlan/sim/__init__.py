"""Simulated end hosts for the control plane at scale: the Table 1 layout and agents that
speak the real agent protocol (`hostvlan.wire`) from one process. May import
`hostvlan.model` and `hostvlan.wire` only."""
