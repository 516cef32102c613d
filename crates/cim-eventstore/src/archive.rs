//! A schema's history taken out and put back, for `cim backup`, `cim restore` and
//! `cim streams rebuild`. The storage of the copies (files, S3, manifests) is the caller's; this
//! module only knows Postgres and JetStream.
//!
//! - [`Cut`]: one consistent read of several schemas at one point while writers keep writing.
//! - [`import`]: rows back into an empty schema, chains checked against the heads a backup
//!   recorded.
//! - [`replay`]: a domain's projections rebuilt by running its own projector over the events;
//!   [`beside`]: the same beside the live tables, then swapped in (`cim replay`).
//! - [`republish`]: a domain's events published again to its stream, each at most once.
//! - [`record`]: the completed backups of a schema, and the gauge of the newest.
//!
//! Rows travel as Postgres' own `row_to_json` text and come back through `json_populate_record`:
//! the `json` payload column is copied verbatim (its text is what the hash chain covers) and no
//! column list is repeated here that a migration could leave behind.

pub mod beside;
mod cut;
pub mod import;
pub mod record;
pub mod replay;
pub mod republish;

pub use cut::{ArchivedEvent, Cut, Head};

/// `schema` as a quoted SQL identifier. Schema names come from code or tests, never from users;
/// quoting keeps an odd one from turning into SQL.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table`, both quoted.
pub(crate) fn table(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}
