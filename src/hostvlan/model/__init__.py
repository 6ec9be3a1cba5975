"""The pure isolation model: value types, LNID table, port bindings, host views, verdicts.

Nothing in this package does I/O, spawns processes, opens sockets or imports asyncio;
it imports nothing of hostvlan outside `hostvlan.model`. Every data-path back end is
tested against `hostvlan.model.verdict`.
"""
