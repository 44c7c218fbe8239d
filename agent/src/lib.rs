//! Keelson's node agent.
