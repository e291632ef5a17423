//! The products and customers the catalog serves, in memory, kept up to
//! date from the store.
//!
//! The request path reads only this: a listing costs no database round
//! trip, and a database that goes away leaves the catalog serving what it
//! had. A refresh task asks the store for its revision every
//! `--data-refresh-interval` (and at once when PostgreSQL notifies an
//! import), and loads only the rows written after the revision held here.
//! Products sit in a map ordered by id, so a page is a range of it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ecommerce_proto::pb::{Customer, Product};

use crate::store::{Row, Store, StoreError};

mod refresh;
pub use refresh::start;

/// What the catalog holds, as of one revision of the store.
#[derive(Debug, Default)]
struct Snapshot {
    products: BTreeMap<i32, Product>,
    customers: HashMap<i32, Customer>,
    revision: i64,
}

impl Snapshot {
    fn apply(&mut self, row: Row) {
        match row {
            Row::Product(product) => {
                self.products.insert(product.id, product);
            }
            Row::Customer(customer) => {
                self.customers.insert(customer.id, customer);
            }
        }
    }
}

/// How current the data is, for `/readyz`, the metrics and the log.
#[derive(Debug, Default)]
struct Freshness {
    /// When the store last answered; `None` until the first load.
    checked: Option<Instant>,
    /// Why the last attempt failed, while it does.
    failing: Option<String>,
}

/// The catalog's products and customers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Data {
    snapshot: Arc<RwLock<Snapshot>>,
    freshness: Arc<Mutex<Freshness>>,
}

/// One page of products.
#[derive(Debug)]
pub struct Page {
    /// The products, by id.
    pub products: Vec<Product>,
    /// The id of the last product listed, when there are more after it.
    pub next_after: Option<i32>,
}

/// Why the data cannot be served: the cause is in `/readyz` and the log,
/// not in answers to anyone who asks for products.
#[derive(Debug, Clone, thiserror::Error)]
#[error("No product data yet: the database has not answered since the catalog started")]
pub struct NotLoaded(pub String);

impl Data {
    /// Empty data, not loaded: what the catalog has until its first load.
    fn empty() -> Self {
        Self {
            snapshot: Arc::default(),
            freshness: Arc::default(),
        }
    }

    /// Data that is loaded already, for unit tests of the code above.
    pub fn fixed(products: Vec<Product>, customers: Vec<Customer>) -> Self {
        let data = Self::empty();
        {
            let mut snapshot = data.write();
            products
                .into_iter()
                .for_each(|p| snapshot.apply(Row::Product(p)));
            customers
                .into_iter()
                .for_each(|c| snapshot.apply(Row::Customer(c)));
        }
        data.succeeded();
        data
    }

    /// At most `size` products with ids above `after` (from the first
    /// when `None`).
    ///
    /// # Errors
    /// [`NotLoaded`] before the first load.
    pub fn page(&self, after: Option<i32>, size: usize) -> Result<Page, NotLoaded> {
        self.loaded()?;
        let snapshot = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = snapshot.products.range((start, Bound::Unbounded));
        let products: Vec<Product> = range.by_ref().take(size).map(|(_, p)| p.clone()).collect();
        let next_after = match range.next() {
            Some(_) => products.last().map(|p| p.id),
            None => None,
        };
        Ok(Page {
            products,
            next_after,
        })
    }

    /// The product with this id, if there is one.
    ///
    /// # Errors
    /// [`NotLoaded`] before the first load.
    pub fn product(&self, id: i32) -> Result<Option<Product>, NotLoaded> {
        self.loaded()?;
        Ok(self.read().products.get(&id).cloned())
    }

    /// The customer with this id, if there is one. `X-USER-ID` is an
    /// `i64`, as Go's `Atoi` reads it; ids beyond `i32` name no one.
    pub fn customer(&self, id: i64) -> Option<Customer> {
        let id = i32::try_from(id).ok()?;
        self.read().customers.get(&id).cloned()
    }

    /// The number of products held.
    pub fn product_count(&self) -> usize {
        self.read().products.len()
    }

    /// How long ago the store last answered (`None`: never), and why it
    /// does not now, if it does not.
    pub fn freshness(&self) -> (Option<Duration>, Option<String>) {
        let freshness = self
            .freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            freshness.checked.map(|at| at.elapsed()),
            freshness.failing.clone(),
        )
    }

    /// One line for `/readyz`: how much data, how fresh.
    pub fn describe(&self) -> String {
        let (age, failing) = self.freshness();
        let (revision, products, customers) = {
            let snapshot = self.read();
            (
                snapshot.revision,
                snapshot.products.len(),
                snapshot.customers.len(),
            )
        };
        match (age, failing) {
            (None, failing) => format!(
                "data: not loaded yet: {}",
                failing.as_deref().unwrap_or("loading")
            ),
            (Some(age), None) => format!(
                "data: {products} products, {customers} customers at revision {revision}, checked {:.1}s ago",
                age.as_secs_f64()
            ),
            (Some(age), Some(failing)) => format!(
                "data: {products} products, {customers} customers at revision {revision}, from {:.1}s ago; the store fails: {failing}",
                age.as_secs_f64()
            ),
        }
    }

    /// Whether the first load is done.
    pub fn is_loaded(&self) -> bool {
        self.loaded().is_ok()
    }

    fn loaded(&self) -> Result<(), NotLoaded> {
        match self.freshness() {
            (Some(_), _) => Ok(()),
            (None, failing) => Err(NotLoaded(failing.unwrap_or_else(|| "loading".to_owned()))),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn succeeded(&self) {
        let mut freshness = self
            .freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cause) = freshness.failing.take() {
            tracing::info!(was = %cause, "the store answers again");
        }
        freshness.checked = Some(Instant::now());
    }

    fn failed(&self, error: &StoreError) {
        let mut freshness = self
            .freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cause = error.to_string();
        if freshness.failing.as_ref() != Some(&cause) {
            // Once per cause, not once per poll.
            if freshness.checked.is_some() {
                tracing::warn!(error = %cause, "cannot refresh the product data; serving what is held");
            } else {
                tracing::warn!(error = %cause, "cannot load the product data yet; /products answers 503 until it can, trying again every --data-refresh-interval");
            }
        }
        freshness.failing = Some(cause);
    }

    /// Brings the data up to the store's revision: only the rows written
    /// since the one held; or everything again when asked to, when the
    /// store's revision went back (a database restored or replaced), and
    /// on the first load.
    async fn refresh(&self, store: &dyn Store, everything: bool) -> Result<(), StoreError> {
        let held = self.read().revision;
        let current = store.revision().await?;
        if current == held && self.freshness().0.is_some() && !everything {
            self.succeeded();
            return Ok(());
        }
        if everything || current < held || self.freshness().0.is_none() {
            // Everything, into a new snapshot swapped in whole: the first
            // load, or a database restored or replaced.
            let mut fresh = Snapshot::default();
            let revision = store.load(0, &mut |row| fresh.apply(row)).await?;
            fresh.revision = revision;
            *self.write() = fresh;
        } else {
            // Loaded aside, then applied under the lock at once, so a
            // reader never sees half an import.
            let mut rows = Vec::new();
            let revision = store.load(held, &mut |row| rows.push(row)).await?;
            let mut snapshot = self.write();
            rows.into_iter().for_each(|row| snapshot.apply(row));
            snapshot.revision = revision;
        }
        self.succeeded();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;

    fn product(id: i32, slug: &str) -> Product {
        Product {
            id,
            slug: slug.to_owned(),
            description: String::new(),
            price_in_cents: 100,
            discount_value: None,
        }
    }

    #[test]
    fn a_page_is_a_range_of_ids_and_says_whether_more_follow() {
        let data = Data::fixed(
            [5, 1, 3, 9]
                .map(|id| product(id, &format!("p{id}")))
                .to_vec(),
            Vec::new(),
        );
        let ids = |page: &Page| page.products.iter().map(|p| p.id).collect::<Vec<_>>();
        let first = data.page(None, 2).unwrap();
        assert_eq!((ids(&first), first.next_after), (vec![1, 3], Some(3)));
        let second = data.page(Some(3), 2).unwrap();
        assert_eq!((ids(&second), second.next_after), (vec![5, 9], None));
        let past = data.page(Some(9), 2).unwrap();
        assert_eq!((ids(&past), past.next_after), (vec![], None));
        // An id that is not there (removed, or never was) still resumes.
        assert_eq!(ids(&data.page(Some(4), 10).unwrap()), vec![5, 9]);
    }

    #[test]
    fn customers_are_found_by_id_and_ids_beyond_int32_name_no_one() {
        let customer = |id, first_name: &str, last_name: &str| Customer {
            id,
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
        };
        let data = Data::fixed(
            Vec::new(),
            vec![
                customer(1, "John", "Snow"),
                customer(2, "Daenerys", "Targaryen"),
            ],
        );
        assert_eq!(
            data.customer(1).map(|c| c.first_name).as_deref(),
            Some("John")
        );
        assert_eq!(
            data.customer(2).map(|c| c.last_name).as_deref(),
            Some("Targaryen")
        );
        for id in [0, 3, -1, i64::MAX, i64::from(i32::MAX) + 1] {
            assert_eq!(data.customer(id), None, "customer {id}");
        }
    }

    /// A store in memory whose revision the test moves.
    #[derive(Debug, Default)]
    struct Fake {
        rows: Mutex<Vec<(i64, Product)>>,
        revision: Mutex<i64>,
        down: Mutex<bool>,
        loads_since: Mutex<Vec<i64>>,
    }

    impl Fake {
        fn put(&self, revision: i64, products: &[Product]) {
            let mut rows = self.rows.lock().unwrap();
            rows.extend(products.iter().map(|p| (revision, p.clone())));
            *self.revision.lock().unwrap() = revision;
        }
        fn check(&self) -> Result<(), StoreError> {
            if *self.down.lock().unwrap() {
                return Err(StoreError::Refused("the fake is down".to_owned()));
            }
            Ok(())
        }
    }

    impl Store for Fake {
        fn revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
            Box::pin(async move {
                self.check()?;
                Ok(*self.revision.lock().unwrap())
            })
        }
        fn load<'a>(
            &'a self,
            since: i64,
            sink: &'a mut (dyn FnMut(Row) + Send),
        ) -> BoxFuture<'a, Result<i64, StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.loads_since.lock().unwrap().push(since);
                let revision = *self.revision.lock().unwrap();
                for (at, product) in self.rows.lock().unwrap().iter() {
                    if *at > since && *at <= revision {
                        sink(Row::Product(product.clone()));
                    }
                }
                Ok(revision)
            })
        }
        fn import_products(&self, _: Vec<Product>) -> BoxFuture<'_, Result<i64, StoreError>> {
            Box::pin(async { Err(StoreError::Refused("read only".to_owned())) })
        }
        fn import_customers(&self, _: Vec<Customer>) -> BoxFuture<'_, Result<i64, StoreError>> {
            Box::pin(async { Err(StoreError::Refused("read only".to_owned())) })
        }
        fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn applied_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
            Box::pin(async { Ok(vec![1]) })
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
            None
        }
    }

    #[tokio::test]
    async fn a_refresh_loads_only_what_changed_and_all_again_when_the_revision_goes_back() {
        let fake = Fake::default();
        fake.put(1, &[product(1, "a"), product(2, "b")]);
        let data = Data::empty();
        assert!(data.page(None, 10).is_err(), "served before the first load");
        data.refresh(&fake, false).await.unwrap();
        fake.put(2, &[product(2, "b2"), product(3, "c")]);
        data.refresh(&fake, false).await.unwrap();
        data.refresh(&fake, false).await.unwrap();
        assert_eq!(
            *fake.loads_since.lock().unwrap(),
            vec![0, 1],
            "a load per change"
        );
        let slugs: Vec<String> = data
            .page(None, 10)
            .unwrap()
            .products
            .into_iter()
            .map(|p| p.slug)
            .collect();
        assert_eq!(slugs, ["a", "b2", "c"]);

        // A database restored to an older state: everything again.
        *fake.rows.lock().unwrap() = vec![(1, product(7, "z"))];
        *fake.revision.lock().unwrap() = 1;
        data.refresh(&fake, false).await.unwrap();
        let ids: Vec<i32> = data
            .page(None, 10)
            .unwrap()
            .products
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [7]);
    }

    #[tokio::test]
    async fn loading_everything_again_drops_what_was_deleted_by_hand() {
        let fake = Fake::default();
        fake.put(1, &[product(1, "a"), product(2, "b")]);
        let data = Data::empty();
        data.refresh(&fake, false).await.unwrap();
        // Rows deleted by hand, the revision moved on: no revision tells.
        *fake.rows.lock().unwrap() = vec![(2, product(2, "b"))];
        *fake.revision.lock().unwrap() = 2;
        data.refresh(&fake, false).await.unwrap();
        assert_eq!(data.product_count(), 2, "an increment cannot see a delete");
        data.refresh(&fake, true).await.unwrap();
        let ids: Vec<i32> = data
            .page(None, 10)
            .unwrap()
            .products
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [2]);
    }

    #[tokio::test]
    async fn a_store_that_fails_leaves_the_data_served_and_says_so() {
        let fake = Fake::default();
        fake.put(1, &[product(1, "a")]);
        let data = Data::empty();
        data.refresh(&fake, false).await.unwrap();
        *fake.down.lock().unwrap() = true;
        let error = data.refresh(&fake, false).await.unwrap_err();
        data.failed(&error);
        assert_eq!(data.page(None, 10).unwrap().products.len(), 1);
        let described = data.describe();
        assert!(described.contains("the store fails: "), "{described}");
        *fake.down.lock().unwrap() = false;
        data.refresh(&fake, false).await.unwrap();
        assert_eq!(data.freshness().1, None);
    }
}
