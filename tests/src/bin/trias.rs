//! The `trias` command line, built inside this package so the end-to-end suite can run it as
//! a process (`CARGO_BIN_EXE_trias-e2e-cli`): the same code as the `trias` binary.

fn main() -> std::process::ExitCode {
    trias_cli::app::main()
}
