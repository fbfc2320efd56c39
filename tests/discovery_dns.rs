#![cfg(feature = "dns")]
//! DNS discovery over an in-process DNS server (written by the DNS work).
