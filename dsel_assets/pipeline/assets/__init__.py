"""Software-defined assets, one package per domain."""
