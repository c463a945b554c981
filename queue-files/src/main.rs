//! The `queue-files` binary; everything happens in the library.

fn main() -> std::process::ExitCode {
    queue_files::main()
}
