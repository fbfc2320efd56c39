//! openai: being written.
