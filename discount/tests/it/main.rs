//! discount's integration tests, in one test binary: each file beside this
//! one is a module of it, so the tests are compiled and linked once rather
//! than once a file. They run in one process, in parallel: what a test
//! changes for the whole process (a global tracing subscriber, signal
//! dispositions, the environment) reaches every other test, so a test that
//! needs that would be a binary of its own.

mod allow;
mod connections;
mod doctor;
mod grpc;
mod hostile;
mod http2;
mod lifecycle;
mod metrics;
mod mtls;
mod probes;
mod readme;
mod rotation;
