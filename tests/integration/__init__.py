"""Integration tier: hostvlan's data-path back ends on a real kernel (needs root)."""
