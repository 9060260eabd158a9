//! The `buildbroker` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = buildbroker::cli::Cli::parse();
    buildbroker::cli::main(cli)
}
