//! Who may call what: discount's allow-list of workload identities.
//!
//! TLS authenticates a client (its certificate is signed by
//! `--client-ca`); this authorizes it. Each connection's identity is read
//! once, from the verified client certificate, when its handshake ends,
//! and added to each of its calls by the server; every call to `ecommerce.Discount` (indeed every
//! call but health and reflection) is then checked against
//! `--allow-client` ([`Authorize`]). Health and reflection stay open to any
//! client the TLS layer let in, so probes and operators need no place on
//! the list.
//!
//! A refusal is `PERMISSION_DENIED` naming the identity presented and the
//! flag that would allow it, never what the list holds, and one log line
//! with the peer, the identity and the method, at most one per identity
//! every few seconds under a flood; the call's `call answered` line
//! follows the same limit ([`Quieted`]).
//!
//! [`Quieted`]: crate::metrics::Quieted
//!
//! The allow-list is read in `allow_list.rs` and checked against the TLS
//! files by the doctor in `doctor.rs`; the calls are checked in
//! `layer.rs`.

mod allow_list;
mod doctor;
mod layer;

pub use allow_list::Allowed;
pub use doctor::check_allow_list;
pub use layer::{Authorize, Authorized};
