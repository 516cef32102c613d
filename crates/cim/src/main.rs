//! The `cim` command line. Logic lives in the library so it can be tested.

fn main() -> std::process::ExitCode {
    cim::main()
}
