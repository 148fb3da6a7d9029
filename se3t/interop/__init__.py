"""Optional adapters to other graph libraries (imported only when used)."""
