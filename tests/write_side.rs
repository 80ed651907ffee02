//! Write route tests (to be written).
