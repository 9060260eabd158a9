//! The `buildbroker` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// Every freed heap block is zeroed first: the copies of secrets that dependencies make in
/// their own buffers (SECURITY.md, "Copies") must not outlive those buffers.
#[global_allocator]
static ALLOCATOR: buildbroker::zeroize_alloc::ZeroizeOnFree =
    buildbroker::zeroize_alloc::ZeroizeOnFree;

fn main() -> ExitCode {
    let cli = buildbroker::cli::Cli::parse();
    buildbroker::cli::main(cli)
}
