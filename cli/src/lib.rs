//! The library behind the `trias` command: every command lives here, so the end-to-end suite
//! drives the same code as the binary. `app` parses arguments and calls the command's module.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, reason = "a command-line tool answers on stdout")]

pub mod admin;
pub mod app;
pub mod audit;
pub mod audit_query;
pub mod browser;
pub mod pki;
pub mod remote;
pub mod token;
pub mod up;
