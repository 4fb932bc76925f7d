//! Streaming CSV ingest for edm: reads a recipients file row by row and says
//! of each row whether to send to it.
//!
//! # Overview
//! - [`open`] reads the header of a file (UTF-8, BOM stripped, or the
//!   encoding in [`ReadOptions::encoding`], or UTF-16 by its BOM; delimiter
//!   sniffed among `,` `;` tab `|` unless [`ReadOptions::delimiter`] is set)
//!   and returns an [`Ingest`], an iterator of [`Row`]s that never holds the
//!   file in memory.
//! - Each [`Row`] carries a [`Verdict`]: [`Verdict::Valid`], or why not
//!   (invalid row or address, duplicate of an earlier line, suppressed). Bad
//!   rows are data, not errors; see [`Verdict`] for the order of the checks.
//!   An invalid row says why as a [`RowProblem`] (a ragged row with its
//!   found and expected field counts, or the address's reason), so callers
//!   decide by variant.
//! - [`Suppression`] is the do-not-send list, loaded from a file or built in
//!   memory.
//! - [`validate`] and [`normalize`] are the address rules used throughout.
//! - [`Error`] is for problems with the file itself; it always names the file
//!   and, where one applies, the line and column ([`Error::reason`] is the
//!   rest, for reports that show those apart).
//!
//! # Layout
//! - `decode.rs`: decoding to UTF-8 as the file is read, below everything else.
//! - `sniff.rs`: the start of a file (empty? which delimiter?).
//! - `ingest.rs`: [`open`], [`Ingest`], [`Row`], [`Verdict`], [`RowProblem`].
//! - `lines.rs`: line numbers of records (csv's own are off after CRLF).
//! - `address.rs`: [`validate`] ([`AddressProblem`]), [`normalize`].
//! - `suppression.rs`: [`Suppression`].
//! - `error.rs`: [`Error`].
//!
//! # Example
//! ```no_run
//! use std::path::Path;
//! use edm_recipients::{open, ReadOptions, Verdict};
//!
//! let ingest = open(Path::new("list.csv"), &ReadOptions::default(), None)?;
//! for row in ingest {
//!     let row = row?;
//!     if row.verdict == Verdict::Valid {
//!         println!("line {}: {}", row.line, row.email);
//!     }
//! }
//! # Ok::<(), edm_recipients::Error>(())
//! ```
#![deny(missing_docs)]

mod address;
mod decode;
mod error;
mod ingest;
mod lines;
mod seen;
mod sniff;
mod suppression;

pub use address::{AddressProblem, normalize, validate};
pub use error::Error;
pub use ingest::{Ingest, ReadOptions, Row, RowProblem, Verdict, open};
pub use suppression::Suppression;
