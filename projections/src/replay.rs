//! Rebuild of a projection into shadow tables, swapped in atomically.
