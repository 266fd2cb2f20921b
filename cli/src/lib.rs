//! The library behind the `trias` command: the commands that are worth driving from tests
//! as well as from the binary. `main.rs` parses arguments and calls into it.

#![forbid(unsafe_code)]

pub mod audit;
pub mod pki;
