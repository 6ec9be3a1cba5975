"""Tenant-filter back ends. May import `hostvlan.model` only (never agent/manager/cli)."""
