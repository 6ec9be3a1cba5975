"""The management server: authoritative LNID table, durable commands, per-host feeds.

May import `hostvlan.model`; never imports `hostvlan.agent` or `hostvlan.datapath`.
"""
