//! A budget of memory for answers waiting to be sent.
//!
//! An answer is built whole (a page of 1,000 products is some 200 KB) and
//! waits in memory until its client reads it. A client that opens many
//! HTTP/2 streams and never reads (a window of 0) pinned every answer: 300
//! such connections asking for pages of 1,000 took the catalog to 1.6 GB,
//! 770 to 3.5 GB. `--max-connections` × `--http2-max-concurrent-streams`
//! × the largest page is no bound worth having, so the bytes of large
//! answers not yet sent are counted here, across all connections, against
//! `--max-unsent-mib`. When a new answer does not fit, the answers that
//! have gone longest without their client taking any of them are dropped
//! to make room: their memory is freed at once, and their stream is reset
//! when its client next lets it send. An answer being read moves to the
//! back of the line at each piece taken, so a flood of new unread answers
//! drops the unread ones first, and a client reading is still served. (By
//! age alone, 30 connections churning unread pages reset a page read at
//! full speed 9 times in 10.)
//!
//! An answer is handed to hyper in pieces, each a copy, so that what a
//! stream holds outside the budget is a piece, not the whole answer kept
//! alive by a slice of it. hyper takes a body's next piece before the
//! client has given room for it, and holds it until it has; so the first
//! piece is small ([`FIRST_PIECE`]: a client that never reads pins that
//! much), and the later ones, taken only once the client has read, are
//! [`PIECE`]s, the size of an HTTP/2 frame. Pieces alive are counted too;
//! while they hold more than half the budget, every piece is small.
//! Answers smaller than [`SMALL`] (the seed's listing, a product) are not
//! counted: their cost is bounded by the stream and connection limits,
//! and they are most of the traffic.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::body::Body;
use hyper::body::{Bytes, Frame, SizeHint};
use prometheus::{IntCounter, IntGauge};

use common::quiet::Quiet;

/// Answers under this many bytes are sent as they are, uncounted.
pub const SMALL: usize = 4 * 1024;

/// The most bytes handed to hyper at a time: one HTTP/2 frame.
const PIECE: usize = 16 * 1024;

/// The bytes handed to hyper first, and always while pieces hold more
/// than half the budget.
const FIRST_PIECE: usize = 512;

/// The answers not yet sent, and the bytes they hold.
#[derive(Debug)]
pub struct Unsent {
    limit: usize,
    ledger: Mutex<Ledger>,
    /// Bytes held now (`catalog_unsent_answer_bytes`).
    held_gauge: IntGauge,
    /// Answers dropped to make room (`catalog_unsent_answers_dropped_total`).
    dropped: IntCounter,
    /// Bytes of pieces handed to hyper and not yet dropped by it.
    in_pieces: AtomicUsize,
    /// Bodies waiting for pieces to drain below the budget.
    waiters: Mutex<Vec<Waker>>,
    has_waiters: AtomicBool,
    quiet: Quiet,
}

#[derive(Debug, Default)]
struct Ledger {
    held: usize,
    next: u64,
    /// By staleness: the key is the order in which they were counted or
    /// last made progress.
    waiting: BTreeMap<u64, Arc<Slot>>,
}

/// What is left to send of one answer; `None` once sent or dropped.
#[derive(Debug)]
struct Slot {
    rest: Mutex<Option<Bytes>>,
    size: usize,
}

impl Slot {
    fn take(&self) -> Option<Bytes> {
        self.rest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Unsent {
    /// A budget of `limit` bytes, reported in `held` and `dropped`.
    pub fn new(limit: usize, held: IntGauge, dropped: IntCounter) -> Self {
        Self {
            limit,
            ledger: Mutex::new(Ledger::default()),
            held_gauge: held,
            dropped,
            in_pieces: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
            has_waiters: AtomicBool::new(false),
            quiet: Quiet::default(),
        }
    }

    /// A copy of the first `len` bytes of `bytes`, counted in
    /// [`Unsent::in_pieces`] until hyper drops it.
    fn piece(self: &Arc<Self>, bytes: &[u8]) -> Bytes {
        self.in_pieces.fetch_add(bytes.len(), Ordering::Relaxed);
        Bytes::from_owner(Piece {
            bytes: bytes.to_vec(),
            unsent: Arc::clone(self),
        })
    }

    /// Whether the pieces hyper holds are over the whole budget: a client
    /// with a huge window that never reads its socket lets h2 take piece
    /// after piece into its send buffer (64 KiB a stream), past the
    /// budget of what is not yet handed over (430 MiB for 300 connections).
    /// Then `waker` is woken when they drain below it.
    fn over_budget(&self, waker: &Waker) -> bool {
        if self.in_pieces.load(Ordering::Acquire) <= self.limit {
            return false;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.push(waker.clone());
        self.has_waiters.store(true, Ordering::Release);
        drop(waiters);
        // Checked again once registered, so that a drain in between is
        // not missed.
        self.in_pieces.load(Ordering::Acquire) > self.limit
    }

    /// Wakes the bodies waiting for pieces to drain.
    fn wake_waiters(&self) {
        let waiters = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            self.has_waiters.store(false, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// How many bytes the next piece of an answer may take.
    fn piece_len(&self, first: bool) -> usize {
        if first || self.in_pieces.load(Ordering::Relaxed) > self.limit / 2 {
            FIRST_PIECE
        } else {
            PIECE
        }
    }

    /// The body of an answer made of `bytes`: counted in the budget until
    /// it is sent or dropped, when it is large; as it is otherwise.
    pub fn body(self: &Arc<Self>, bytes: Vec<u8>) -> Body {
        if bytes.len() < SMALL {
            return Body::from(bytes);
        }
        let size = bytes.len();
        let slot = Arc::new(Slot {
            rest: Mutex::new(Some(Bytes::from(bytes))),
            size,
        });
        let id = self.admit(&slot);
        Body::new(Counted {
            slot,
            id,
            unsent: Arc::clone(self),
            remaining: size,
        })
    }

    /// Counts `slot`, first dropping the oldest answers while it does not
    /// fit. Returns its place in the ledger.
    fn admit(&self, slot: &Arc<Slot>) -> u64 {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0_usize;
        while ledger.held + slot.size > self.limit {
            let Some((_, oldest)) = ledger.waiting.pop_first() else {
                break;
            };
            ledger.held -= oldest.size;
            oldest.take();
            dropped += 1;
        }
        let id = ledger.next;
        ledger.next += 1;
        ledger.held += slot.size;
        ledger.waiting.insert(id, Arc::clone(slot));
        self.held_gauge
            .set(i64::try_from(ledger.held).unwrap_or(i64::MAX));
        drop(ledger);
        if dropped > 0 {
            self.dropped.inc_by(dropped as u64);
            if let Some(unlogged) = self.quiet.should_log("dropped", Instant::now()) {
                tracing::warn!(
                    dropped,
                    unlogged,
                    limit_mib = self.limit / (1024 * 1024),
                    "answers unread by their clients hold all of --max-unsent-mib; dropped the oldest to make room (their streams are reset)"
                );
            }
        }
        id
    }

    /// Answer `id` made progress (its client took a piece beyond the first):
    /// it moves to the newest place, last in line to be dropped. Returns
    /// its new place.
    fn touch(&self, id: u64) -> u64 {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = ledger.waiting.remove(&id) else {
            return id;
        };
        let moved = ledger.next;
        ledger.next += 1;
        ledger.waiting.insert(moved, slot);
        moved
    }

    /// No longer counts answer `id`, sent or abandoned.
    fn release(&self, id: u64) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = ledger.waiting.remove(&id) {
            ledger.held -= slot.size;
            slot.take();
        }
        self.held_gauge
            .set(i64::try_from(ledger.held).unwrap_or(i64::MAX));
    }
}

/// A copy of part of an answer, handed to hyper.
struct Piece {
    bytes: Vec<u8>,
    unsent: Arc<Unsent>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let unsent = &self.unsent;
        let before = unsent
            .in_pieces
            .fetch_sub(self.bytes.len(), Ordering::AcqRel);
        if unsent.has_waiters.load(Ordering::Acquire) && before - self.bytes.len() <= unsent.limit {
            unsent.wake_waiters();
        }
    }
}

/// A large answer's body: pieces copied out of its slot, until it is sent,
/// or an error once the budget dropped it.
struct Counted {
    slot: Arc<Slot>,
    id: u64,
    unsent: Arc<Unsent>,
    remaining: usize,
}

/// The error that resets the stream of an answer dropped from the budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "answer dropped unsent: its client did not read it while others needed the memory (--max-unsent-mib)"
)]
pub struct Dropped;

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = Dropped;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Dropped>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let first = self.remaining == self.slot.size;
        // The first piece always (512 bytes a stream, bounded by the
        // stream limits); later ones only while hyper holds less than the
        // budget.
        if !first && self.unsent.over_budget(cx.waker()) {
            return Poll::Pending;
        }
        let len = self.unsent.piece_len(first);
        let piece = {
            let mut rest = self
                .slot
                .rest
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(bytes) = rest.as_mut() else {
                return Poll::Ready(Some(Err(Dropped)));
            };
            let piece = self.unsent.piece(&bytes[..len.min(bytes.len())]);
            if piece.len() == bytes.len() {
                *rest = None;
            } else {
                *bytes = bytes.slice(piece.len()..);
            }
            piece
        };
        self.remaining -= piece.len();
        if self.remaining == 0 {
            self.unsent.release(self.id);
        } else if !first {
            // hyper takes the first piece before the client has made room;
            // a later one means the client is reading.
            self.id = self.unsent.touch(self.id);
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.remaining > 0 {
            self.unsent.release(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    fn budget(limit: usize) -> Arc<Unsent> {
        let held = IntGauge::new("held", "held").unwrap_or_else(|e| panic!("{e}"));
        let dropped = IntCounter::new("dropped", "dropped").unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Unsent::new(limit, held, dropped))
    }

    fn answer(fill: u8, len: usize) -> Vec<u8> {
        vec![fill; len]
    }

    #[tokio::test]
    async fn a_large_answer_is_sent_whole_in_pieces_and_then_no_longer_counted() {
        let unsent = budget(1 << 20);
        let body = unsent.body(answer(7, 40_000));
        assert_eq!(body.size_hint().exact(), Some(40_000));
        assert_eq!(unsent.held_gauge.get(), 40_000);
        let mut body = body;
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("{e}"));
            pieces.push(frame.into_data().unwrap_or_default());
        }
        // A small first piece, then frames.
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [FIRST_PIECE, PIECE, PIECE, 40_000 - FIRST_PIECE - 2 * PIECE]
        );
        assert!(pieces.iter().flatten().all(|&b| b == 7));
        assert_eq!(unsent.held_gauge.get(), 0);
        assert_eq!(unsent.in_pieces.load(Ordering::Relaxed), 40_000);
        drop(pieces);
        assert_eq!(unsent.in_pieces.load(Ordering::Relaxed), 0);
        // Small answers are not counted at all.
        let small = unsent.body(answer(1, SMALL - 1));
        assert_eq!(unsent.held_gauge.get(), 0);
        let bytes = small.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok().map(|b| b.len()), Some(SMALL - 1));
    }

    #[tokio::test]
    async fn the_oldest_unsent_answers_are_dropped_to_make_room_and_reset() {
        let unsent = budget(100_000);
        let mut oldest = unsent.body(answer(1, 40_000));
        let mut older = unsent.body(answer(2, 40_000));
        assert_eq!(unsent.held_gauge.get(), 80_000);
        // A third does not fit: the oldest goes, the next stays.
        let newest = unsent.body(answer(3, 40_000));
        assert_eq!(unsent.held_gauge.get(), 80_000);
        assert_eq!(unsent.dropped.get(), 1);
        let error = oldest.frame().await.map(|frame| frame.is_err());
        assert_eq!(error, Some(true), "the dropped answer must end in an error");
        let first = older.frame().await.and_then(Result::ok);
        let first = first.and_then(|f| f.into_data().ok()).unwrap_or_default();
        assert_eq!(first.len(), FIRST_PIECE);
        // An answer dropped by its client (the stream closed) frees its
        // bytes.
        drop(older);
        assert_eq!(unsent.held_gauge.get(), 40_000);
        drop(newest);
        assert_eq!(unsent.held_gauge.get(), 0);
        // While hyper holds pieces of more than half the budget, every
        // piece is small.
        let mut slowed = unsent.body(answer(5, 80_000));
        let mut kept = Vec::new();
        while let Some(Ok(frame)) = slowed.frame().await {
            kept.push(frame.into_data().unwrap_or_default());
        }
        let lens: Vec<_> = kept.iter().map(Bytes::len).collect();
        // 1 KiB held from before, and 49 KiB here: over half of 100,000.
        assert_eq!(lens[..4], [FIRST_PIECE, PIECE, PIECE, PIECE]);
        assert!(lens[4..].iter().all(|&len| len <= FIRST_PIECE), "{lens:?}");
        assert_eq!(lens.iter().sum::<usize>(), 80_000);
        assert_eq!(
            unsent.in_pieces.load(Ordering::Relaxed),
            80_000 + FIRST_PIECE
        );
        drop((first, kept));
        assert_eq!(unsent.in_pieces.load(Ordering::Relaxed), 0);
        // One larger than the whole budget is still sent, alone.
        // (Each piece dropped once counted, as hyper drops it once written:
        // held, they would be over the budget and wait for each other.)
        let mut huge = unsent.body(answer(4, 150_000));
        let mut bytes = 0;
        while let Some(Ok(frame)) = huge.frame().await {
            bytes += frame.into_data().map(|d| d.len()).unwrap_or_default();
        }
        assert_eq!(bytes, 150_000);
        assert_eq!(unsent.held_gauge.get(), 0);
    }

    #[tokio::test]
    async fn an_answer_being_read_outlasts_newer_ones_never_read() {
        let unsent = budget(100_000);
        let mut read = unsent.body(answer(1, 40_000));
        let _unread = unsent.body(answer(2, 40_000));
        // Its client takes the first piece (which hyper takes blindly),
        // then another: it is reading.
        for _ in 0..2 {
            assert!(matches!(read.frame().await, Some(Ok(_))));
        }
        // A newcomer drops the answer nobody read, older or not.
        let _newest = unsent.body(answer(3, 40_000));
        assert_eq!(unsent.dropped.get(), 1);
        let mut rest = 0;
        while let Some(frame) = read.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("the answer being read was dropped: {e}"));
            rest += frame.into_data().map(|d| d.len()).unwrap_or_default();
        }
        assert_eq!(rest, 40_000 - FIRST_PIECE - PIECE);
    }

    #[tokio::test]
    async fn no_more_pieces_are_handed_over_while_hyper_holds_the_budget() {
        let unsent = budget(100_000);
        // Pieces taken and held, as h2 holds them for a client that never
        // reads its socket: past the whole budget.
        let mut held_answer = unsent.body(answer(1, 200_000));
        let mut held = Vec::new();
        while unsent.in_pieces.load(Ordering::Relaxed) <= 100_000 {
            let frame = held_answer.frame().await.and_then(Result::ok);
            held.push(frame.and_then(|f| f.into_data().ok()).unwrap_or_default());
        }
        // Another answer gets its first piece, then waits.
        let mut waiting = unsent.body(answer(2, 40_000));
        assert!(matches!(waiting.frame().await, Some(Ok(_))));
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(50), waiting.frame()).await;
        assert!(next.is_err(), "a piece was handed over past the budget");
        // Once the held pieces drain, it goes on to the end.
        let rest = tokio::spawn(async move {
            let mut bytes = 0;
            while let Some(Ok(frame)) = waiting.frame().await {
                bytes += frame.into_data().map(|d| d.len()).unwrap_or_default();
            }
            bytes
        });
        drop(held);
        let bytes = tokio::time::timeout(std::time::Duration::from_secs(10), rest).await;
        assert_eq!(bytes.ok().and_then(Result::ok), Some(40_000 - FIRST_PIECE));
    }
}
