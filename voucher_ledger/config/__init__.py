"""Configuration: the one ``Settings`` object (environment and flags) and the error a process
gives when it cannot start. Depends on nothing else of the package."""
