//! gemini: being written.
