//! The transport conformance suite (written alongside `herald-memory`).
