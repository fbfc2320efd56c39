//! messages: being written.
