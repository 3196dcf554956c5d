//! The `mapek` binary: parse arguments, run, map the result to an exit code.
#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc instead of the system allocator: the loop allocates and frees many small values
/// (rows, names, findings) every cycle, and glibc's allocator spent a tenth of the
/// simulator's time consolidating and unlinking chunks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = mapek::cli::Cli::parse();
    match mapek::cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", mapek::cli::describe(&error));
            std::process::ExitCode::from(2)
        }
    }
}
