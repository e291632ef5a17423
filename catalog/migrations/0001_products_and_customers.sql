-- The catalog's data: products and customers, each row stamped with the
-- revision of the import that wrote it, so a replica loads only what
-- changed since the revision it has. An import updates the one row of
-- `revision` first, so imports take their revisions in the order they
-- commit. The same SQL for SQLite and PostgreSQL.
CREATE TABLE revision (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    revision BIGINT NOT NULL
);
INSERT INTO revision (only_row, revision) VALUES (1, 0);

CREATE TABLE products (
    id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 2147483647),
    slug TEXT NOT NULL UNIQUE CHECK (slug <> ''),
    description TEXT NOT NULL,
    price_in_cents INTEGER NOT NULL CHECK (price_in_cents BETWEEN 0 AND 2147483647),
    revision BIGINT NOT NULL
);
CREATE INDEX products_by_revision ON products (revision);

CREATE TABLE customers (
    id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 2147483647),
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    revision BIGINT NOT NULL
);
CREATE INDEX customers_by_revision ON customers (revision);
