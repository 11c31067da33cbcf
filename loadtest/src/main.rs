//! `loadtest`: the command line; everything else lives in the library.

fn main() -> std::process::ExitCode {
    loadtest::cli::main()
}
