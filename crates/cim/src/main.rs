//! The `cim` command line. Logic lives in the library so it can be tested.

/// mimalloc: glibc's malloc was 15-20% of a service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cim::main()
}
