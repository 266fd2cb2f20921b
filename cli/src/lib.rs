//! The library behind the `trias` command: every command lives here, so the end-to-end suite
//! drives the same code as the binary. `app` parses arguments and calls the command's module.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, reason = "a command-line tool answers on stdout")]

pub mod app;
pub mod audit;
pub mod pki;
pub mod up;
