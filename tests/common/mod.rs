//! Shared helpers for integration tests: a real PostgreSQL server
//! ([`server::TestServer`]) and a TCP fault proxy ([`proxy::Proxy`]).
//!
//! Use with `mod common;` and `common::server::TestServer::shared()`.
#![allow(dead_code)]

pub mod fixtures;
pub mod logger;
pub mod proxy;
pub mod server;
