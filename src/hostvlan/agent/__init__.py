"""The control daemon of one end host: keeps the host's tenant filter in step with the
manager. May import `hostvlan.model`, `hostvlan.datapath` and `hostvlan.client`;
never imports `hostvlan.manager`."""
