//! Unit tests of the collectors.
