//! Shared helpers for the integration tests. Not every test uses every helper.

#![allow(dead_code)]

pub mod servers;
