//! Reads the API serves from the read models (filled in with the read API).
