//! The `transcode-worker` binary: everything is in [`transcode_worker::cli`].

fn main() -> std::process::ExitCode {
    transcode_worker::cli::run()
}
