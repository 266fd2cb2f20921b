//! `trias`: the command line of the Trias suite (see [`trias_cli::app`]).

fn main() -> std::process::ExitCode {
    trias_cli::app::main()
}
