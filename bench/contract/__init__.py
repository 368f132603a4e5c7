"""What plugins, backends and records agree on, with no torch, Ray or pandas: the method
contract, search spaces, option checks, the trial protocol, the record schema and the
plugin registry."""
