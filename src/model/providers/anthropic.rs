//! anthropic: being written.
