//! SQLite store: schema, migrations, batched writer thread, report queries. (to be written)
