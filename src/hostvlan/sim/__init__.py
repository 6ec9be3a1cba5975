"""Simulated end hosts for the control plane at scale: the Table 1 layout and agents that
speak the real agent protocol from one process. May import `hostvlan.model` only."""
