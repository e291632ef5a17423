//! Which replica prices a listing: the first pick, the products it failed
//! sent once more to another replica within the retry budget, and the hedge
//! when the first has not answered within a third of the deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::telemetry::Untrusted;
use ecommerce_proto::pb::{Customer, Product};
use tower::retry::budget::Budget;

use super::outcome::CallError;
use super::replica::Replica;
use super::{Answers, DiscountClient};

/// A listing not answered within this share of the deadline (a third) is
/// sent to a second replica as well ([`DiscountClient::hedge`]).
const HEDGE_AFTER: u32 = 3;
impl DiscountClient {
    /// [`DiscountClient::apply_to_all`]'s attempts.
    pub(super) async fn price(
        &self,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Answers {
        self.pool.resolved(deadline).await;
        let Some(first) = self.pool.pick(None) else {
            return products.iter().map(|_| Err(CallError::NoReplica)).collect();
        };
        self.budget.deposit();
        let hedge_after = deadline.saturating_duration_since(Instant::now()) / HEDGE_AFTER;
        let first_call = self.price_on(&first, deadline, customer, products);
        tokio::pin!(first_call);
        // No timer when there is no other replica to hedge to.
        let hedged = if self.pool.others_in_rotation(&first) {
            tokio::time::timeout(hedge_after, first_call.as_mut()).await
        } else {
            Ok(first_call.as_mut().await)
        };
        let mut answers = match hedged {
            Ok(answers) => answers,
            Err(_) => {
                let hedge = (&first, hedge_after);
                return self
                    .hedge(hedge, first_call, deadline, customer, products)
                    .await;
            }
        };
        let failed: Vec<usize> = (0..answers.len())
            .filter(|&i| !CallError::settled(&answers[i]))
            .collect();
        let Some(error) = failed.first().and_then(|&i| answers[i].as_ref().err()) else {
            return answers;
        };
        let unprocessed = failed
            .iter()
            .all(|&i| answers[i].as_ref().is_err_and(CallError::retryable));
        // Another replica, or the same one when it is the only one and
        // never processed the call (at a GOAWAY, a new connection will).
        let second = self
            .pool
            .pick(Some(first.addr))
            .or_else(|| (unprocessed && first.takes_calls()).then(|| first.clone()));
        let Some(second) = second else {
            return answers;
        };
        if Instant::now() >= deadline || !self.budget.withdraw() {
            return answers;
        }
        if unprocessed {
            tracing::debug!(%error, replica = %second.addr, "discount did not process the call; sending it again");
        } else {
            let cause = format!("{} from {}", error, first.addr);
            if let Some(unlogged) = self.quiet.should_log(&cause, Instant::now()) {
                tracing::warn!(replica = %first.addr, cause = %Untrusted(&cause), failed = failed.len(), of = products.len(), to = %second.addr, unlogged,
                    "discount replica failed; sending the products it failed to another replica");
            }
        }
        self.metrics.retried();
        let again: Vec<Product> = failed.iter().map(|&i| products[i].clone()).collect();
        let retried = self.price_on(&second, deadline, customer, &again).await;
        for (i, answer) in failed.into_iter().zip(retried) {
            answers[i] = answer;
        }
        answers
    }

    /// Counts the call to `replica` that a hedge abandoned, cancelled after
    /// `took`: dropped unfinished, it would be in no per-replica series,
    /// and the slowest calls are the ones those are for.
    pub(super) fn abandoned(&self, replica: &Replica, took: Duration) {
        let method = if replica.batch.load(Ordering::Relaxed) {
            "ApplyDiscounts"
        } else {
            "ApplyDiscount"
        };
        self.metrics
            .call(&replica.series, method, tonic::Code::Cancelled, took);
    }

    /// `first` has not answered the listing within `hedge_after` (a
    /// [`HEDGE_AFTER`]th of the deadline, far beyond a healthy answer):
    /// sends it to another replica too, when there is one and the retry
    /// budget allows, and takes the first whole answer. A call that waits
    /// out the deadline has no time left to be sent again, so a replica
    /// that hangs one call in three cost a listing each time until it was
    /// ejected: four of them beside a good one left 3% of listings
    /// undiscounted. The abandoned call is cancelled and counted as
    /// CANCELLED in its replica's metrics; when it is `first`'s, it is held
    /// against `first` as a slow answer.
    pub(super) async fn hedge<F>(
        &self,
        (first, hedge_after): (&Arc<Replica>, Duration),
        mut first_call: std::pin::Pin<&mut F>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Answers
    where
        F: Future<Output = Answers>,
    {
        let second = self
            .pool
            .pick(Some(first.addr))
            .filter(|_| self.budget.withdraw());
        let Some(second) = second else {
            return first_call.await;
        };
        tracing::debug!(replica = %first.addr, to = %second.addr, ?hedge_after, "no answer from discount yet; asking another replica too");
        self.metrics.retried();
        let started = Instant::now();
        let second_call = self.price_on(&second, deadline, customer, products);
        tokio::pin!(second_call);
        let whole = |answers: &Answers| answers.iter().all(CallError::settled);
        tokio::select! {
            answers = first_call.as_mut() => {
                if whole(&answers) {
                    self.abandoned(&second, started.elapsed());
                    answers
                } else {
                    second_call.await
                }
            }
            answers = second_call.as_mut() => {
                if whole(&answers) {
                    let slow = CallError::Deadline(hedge_after);
                    self.pool.record(first, Some(&slow));
                    self.abandoned(first, hedge_after + started.elapsed());
                    answers
                } else {
                    first_call.await
                }
            }
        }
    }

    /// `products` priced by `replica`, one answer per product (a failed
    /// call is every product's error), the outcome noted on the replica
    /// once for the listing, as its load is counted once: a seed-built
    /// replica is not three times as busy, nor three times as failing, when
    /// one listing is slow.
    pub(super) async fn price_on(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Answers {
        let pending = replica.begin();
        let answers = match self.ask(replica, deadline, customer, products).await {
            Ok(answers) => answers,
            Err(error) => products.iter().map(|_| Err(error.clone())).collect(),
        };
        drop(pending);
        // A product too large to send says nothing about the replica.
        let error = answers
            .iter()
            .filter(|answer| !CallError::settled(answer))
            .find_map(|answer| answer.as_ref().err());
        self.pool.record(replica, error);
        answers
    }
}
