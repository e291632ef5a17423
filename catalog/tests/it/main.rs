//! The catalog's integration tests, in one test binary: each file beside
//! this one is a module of it, so the tests are compiled and linked once
//! rather than once a file. They run in one process, in parallel: what a
//! test changes for the whole process (a global tracing subscriber, signal
//! dispositions, the environment) reaches every other test, so a test that
//! needs that stays a binary of its own (`tests/traces.rs`, see its header).

mod support;

mod api;
mod connection;
mod data;
mod hostile;
mod http2;
mod identity;
mod metrics;
mod postgres;
mod probes;
mod readme;
mod replicas;
mod resilience;
mod rotation;
mod shutdown;
mod store;
