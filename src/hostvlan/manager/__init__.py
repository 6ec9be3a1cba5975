"""The management server: authoritative LNID table, durable commands, per-host feeds.

May import `hostvlan.model` and `hostvlan.wire`; never imports `hostvlan.agent`,
`hostvlan.datapath` or `hostvlan.client`.
"""
