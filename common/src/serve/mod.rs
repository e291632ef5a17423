//! How both services serve their connections: one server skeleton
//! ([`server`]) and one connection's life ([`connection`]) over the parts
//! they share: the listening socket and accepting with backoff
//! ([`listener`]), the open-files limit raised first ([`open_files`]),
//! each connection tracked so it can be closed from outside
//! ([`connections`]), whether it has requests in flight, for eviction at
//! the limit and the idle timeout ([`activity`]), and reading paused while
//! the runtime is behind ([`backlog`]).

pub mod activity;
pub mod backlog;
pub mod connection;
pub mod connections;
pub mod listener;
pub mod open_files;
pub mod server;
