use std::process::ExitCode;

fn main() -> ExitCode {
    drctl::cli::main()
}
