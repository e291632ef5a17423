//! How both services hold their connections, whatever serves them: the
//! listening socket and accepting with backoff ([`listener`]), the
//! open-files limit raised first ([`open_files`]), each connection tracked
//! so it can be closed from outside ([`connections`], [`connect_info`]),
//! whether it has requests in flight, for eviction at the limit and the
//! idle timeout ([`activity`]), and reading paused while the runtime is
//! behind ([`backlog`]).

pub mod activity;
pub mod backlog;
pub mod connect_info;
pub mod connections;
pub mod listener;
pub mod open_files;
