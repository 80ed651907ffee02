//! Role table tests (to be written).
