//! The pipeline process's own side: GStreamer loaded once, then one
//! request after another read from standard input, events written to
//! standard output.

use super::*;

/// Entry point of `transcode-worker pipeline`: loads GStreamer and the
/// plugins of the elements `preload` names, then runs one spec after
/// another from standard input (one JSON line each), reporting on standard
/// output. Exits 0 when standard input closes, 2 after a failed job.
pub fn child_main(preload: &[String]) -> i32 {
    // Rust's runtime handles SIGSEGV and SIGBUS to report stack overflows,
    // and lets a signal sent with kill(2) pass; a pipeline process must die
    // of any such signal, so the worker sees the crash.
    // SAFETY: restoring the default disposition of two signals at start-up,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    set_process_name(STANDBY_NAME);
    let stdout = std::io::stdout();
    let emit = |event: &ChildEvent| {
        let mut out = stdout.lock();
        let _ = serde_json::to_writer(&mut out, event);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    // A failure to load shows again, with its reason, when the job runs.
    let _ = pipeline::preload(preload.iter().map(String::as_str));
    let stdin = std::io::stdin();
    loop {
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                emit(&ChildEvent::Failed {
                    kind: ErrorKind::Internal,
                    message: format!("reading the spec: {e}"),
                });
                return 2;
            }
        }
        set_process_name(RUNNING_NAME);
        let result = match serde_json::from_str::<pipeline::PartRequest>(&line) {
            Ok(request) => run_part_child(&request, &emit).map(ChildEvent::PartFinished),
            Err(_) => run_child(&line, &emit).map(ChildEvent::Finished),
        };
        match result {
            Ok(finished) => emit(&finished),
            Err(e) => {
                emit(&ChildEvent::Failed {
                    kind: e.kind,
                    message: e.message,
                });
                return 2;
            }
        }
        set_process_name(STANDBY_NAME);
    }
}

/// Sets this process's name as `ps` and `/proc/PID/comm` show it.
fn set_process_name(name: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL in a process name");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // (longer names are cut); `name` outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

fn run_child(line: &str, emit: &dyn Fn(&ChildEvent)) -> Result<Outcome, JobError> {
    let spec: TranscodeSpec = serde_json::from_str(line)
        .map_err(|e| JobError::new(ErrorKind::Internal, format!("bad spec: {e}")))?;
    let started = std::time::Instant::now();
    let input = pipeline::probe(&spec.input, Duration::from_secs(60))?;
    let probe_ms = started.elapsed().as_millis() as u64;
    pipeline::check_input_limits(&spec, &input)?;
    emit(&ChildEvent::Probed {
        input: input.clone(),
    });
    let transcoded = pipeline::transcode(&spec, &input, |position, duration| {
        emit(&ChildEvent::Position {
            position_ms: position.as_millis() as u64,
            duration_ms: duration.map(|d| d.as_millis() as u64),
        })
    })?;
    let started = std::time::Instant::now();
    let outputs = spec
        .outputs
        .iter()
        .zip(transcoded.outputs)
        .map(|(output, (rendered, left_out))| {
            pipeline::finish(
                output,
                &input,
                spec.duration_tolerance_ms,
                rendered,
                left_out,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Outcome {
        outputs,
        decoders: transcoded.decoders,
        timings: pipeline::Timings {
            probe_ms,
            verify_ms: started.elapsed().as_millis() as u64,
            ..transcoded.timings
        },
    })
}

fn run_part_child(
    request: &pipeline::PartRequest,
    emit: &dyn Fn(&ChildEvent),
) -> Result<pipeline::PartOutcome, JobError> {
    pipeline::run_part(request, |position, duration| {
        emit(&ChildEvent::Position {
            position_ms: position.as_millis() as u64,
            duration_ms: duration.map(|d| d.as_millis() as u64),
        })
    })
}
