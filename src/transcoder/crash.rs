//! How the death of a pipeline process, or an allocation failure it
//! printed, becomes the attempt's error.

use super::*;

/// What libraries print when an allocation fails: x264 (`malloc of size N
/// failed`), GLib (`failed to allocate N bytes`, then it aborts), Rust
/// (`memory allocation of N bytes failed`, then it aborts) and `strerror`'s
/// `ENOMEM`, which libav and others pass on.
const ALLOCATION_FAILURES: &[&str] = &[
    "malloc of size",
    "failed to allocate",
    "memory allocation of",
    "Cannot allocate memory",
];

/// The first line of a pipeline process's last output that says an
/// allocation failed.
pub(super) fn allocation_failure(tail: &str) -> Option<&str> {
    tail.lines()
        .find(|line| ALLOCATION_FAILURES.iter().any(|m| line.contains(m)))
        .map(str::trim)
}

/// An attempt whose pipeline process could not allocate memory (`line` is
/// what it printed) ended in `error`, however the pipeline reported it (an
/// encoder that cannot start, an abort): it ran out of memory, which is a
/// crash of that process, never a verdict on the job.
pub(super) fn out_of_memory(limit: Option<u64>, line: &str, error: &JobError) -> JobError {
    let limit = match limit {
        Some(bytes) => format!(
            " (its limit is {} MiB, pipeline_memory_limit_mb)",
            bytes >> 20
        ),
        None => String::new(),
    };
    JobError::new(
        ErrorKind::PipelineCrashed,
        format!(
            "the pipeline process ran out of memory{limit}: {line}; then: {}",
            error.message
        ),
    )
}

pub(super) fn crashed(status: std::process::ExitStatus, tail: &str) -> JobError {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.signal() {
        Some(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        None => format!("exited with {status} without a result"),
    };
    let mut message = format!("the pipeline process {how}");
    if !tail.is_empty() {
        let tail: String = tail
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        message.push_str(&format!("; its last output: {tail}"));
    }
    JobError::new(ErrorKind::PipelineCrashed, message)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL, perhaps out of memory",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_failure_in_the_output_is_an_out_of_memory_crash() {
        let tail = "x264 [info]: using cpu capabilities: MMX2 SSE2Fast\n\
                    x264 [error]: malloc of size 49766400 failed\n";
        let line = allocation_failure(tail).expect("found");
        assert_eq!(line, "x264 [error]: malloc of size 49766400 failed");
        let reported = JobError::new(
            ErrorKind::TranscodeFailed,
            "GStreamer error in x264enc0: Can not initialize x264 encoder.",
        );
        let e = out_of_memory(Some(256 << 20), line, &reported);
        assert_eq!(e.kind, ErrorKind::PipelineCrashed);
        assert_eq!(
            e.message,
            "the pipeline process ran out of memory (its limit is 256 MiB, pipeline_memory_limit_mb): \
             x264 [error]: malloc of size 49766400 failed; \
             then: GStreamer error in x264enc0: Can not initialize x264 encoder."
        );
        for line in [
            "(transcode-worker:1): GLib-ERROR **: 01:02:03.456: ../glib/gmem.c:136: failed to allocate 33177600 bytes",
            "memory allocation of 1048576 bytes failed",
            "[h264 @ 0x55] get_buffer() failed: Cannot allocate memory",
        ] {
            assert_eq!(allocation_failure(line), Some(line), "{line}");
        }
        assert_eq!(allocation_failure("WARNING: a late buffer\nsegfault"), None);
        let e = out_of_memory(None, "memory allocation of 8 bytes failed", &reported);
        assert!(
            e.message
                .starts_with("the pipeline process ran out of memory: memory allocation"),
            "{}",
            e.message
        );
    }
}
