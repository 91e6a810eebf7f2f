//! How both binaries end when their reader goes away (`… | head`): quietly, with the status a
//! Unix tool killed by SIGPIPE has (128 + 13), instead of `println!`'s panic ("failed printing
//! to stdout: Broken pipe") or an `error: Broken pipe` line. Rust ignores SIGPIPE, so a write to
//! a closed pipe is an error the program must handle; this is the one place that does.

/// The exit status after a closed pipe.
pub const CLOSED_PIPE: u8 = 141;

/// Makes a `println!` into a closed pipe end the process quietly (call first in `main`).
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(i32::from(CLOSED_PIPE));
        }
        default(info);
    }));
}

/// Whether `e` (anywhere in its chain) is a write into a closed pipe.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit code for a command's result: success, quiet on a closed pipe, else the error's
/// whole chain on stderr and failure.
pub fn code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if is_closed_pipe(&e) => std::process::ExitCode::from(CLOSED_PIPE),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_found_anywhere_in_the_chain() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(pipe).context("writing the table");
        assert!(is_closed_pipe(&e));
        assert!(!is_closed_pipe(&anyhow::anyhow!("no such file")));
    }
}
